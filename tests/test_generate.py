"""Generation: the KV cache against full recomputation, sampling rules, stop token, context."""

import math

import pytest
import torch

from xinslm.errors import XinslmError
from xinslm.generate import generate
from xinslm.model import KVCache, ModelConfig, NanoChatModel
from xinslm.sampling import Sampling, sample_next

CONFIG = dict(vocab_size=261, context_len=128, n_layer=2, n_head=4, n_kv_head=2, n_embd=64)
PROMPT = [256, 72, 101, 108, 108, 111, 44, 32, 119, 111]  # BOS "Hello, wo"


@torch.no_grad()
def context_model(seed=0, **overrides):
    """A tiny model whose predictions depend on the context: the init zeroes the output
    projections and shrinks the head (near-uniform logits), so give them real weights."""
    torch.manual_seed(seed)
    model = NanoChatModel(ModelConfig(**{**CONFIG, **overrides}))
    for block in model.blocks:
        torch.nn.init.normal_(block.attn.c_proj.weight, std=0.3)
        torch.nn.init.normal_(block.mlp.c_proj.weight, std=0.3)
    torch.nn.init.normal_(model.lm_head.weight, std=0.3)
    return model.eval()


def greedy(model, prompt=PROMPT, n=40, **kwargs):
    return list(generate(model, prompt, Sampling(max_new_tokens=n, temperature=0), **kwargs))


# --- KV cache ------------------------------------------------------------------------------


@pytest.mark.parametrize("n_kv_head", [2, 4, 1], ids=["gqa", "mha", "mqa"])
def test_cached_greedy_decoding_equals_full_recomputation(n_kv_head):
    model = context_model(n_kv_head=n_kv_head)
    cached = greedy(model, use_cache=True)
    full = greedy(model, use_cache=False)
    assert len(cached) == 40
    assert len(set(cached)) > 3, "degenerate model: the comparison would prove nothing"
    assert cached == full


def test_cached_sampling_equals_full_recomputation_for_the_same_seed():
    model = context_model()
    seven, eight = (Sampling(40, temperature=1.0, top_k=20, top_p=0.9, seed=s) for s in (7, 8))
    cached = list(generate(model, PROMPT, seven, use_cache=True))
    full = list(generate(model, PROMPT, seven, use_cache=False))
    again = list(generate(model, PROMPT, seven))
    other = list(generate(model, PROMPT, eight))
    assert len(cached) == 40
    assert cached == full == again
    assert other != cached
    assert cached != greedy(model), "sampling at temperature 1 should not be greedy"


@torch.no_grad()
@pytest.mark.parametrize("n_kv_head", [2, 4, 1], ids=["gqa", "mha", "mqa"])
def test_cached_forward_equals_full_forward(n_kv_head):
    model = context_model(n_kv_head=n_kv_head)
    torch.manual_seed(1)
    ids = torch.randint(0, 261, (2, 40))
    want, _ = model(ids)
    cache = KVCache(model.config, batch_size=2, device="cpu")
    pieces = [model(ids[:, :10], cache=cache)[0]]  # prefill: causal
    assert cache.pos == 10
    pieces.append(model(ids[:, 10:25], cache=cache)[0])  # a chunk: the explicit mask
    assert cache.pos == 25
    for t in range(25, 40):  # one token at a time
        pieces.append(model(ids[:, t : t + 1], cache=cache)[0])
    got = torch.cat(pieces, dim=1)
    assert cache.pos == 40
    assert got.shape == want.shape == (2, 40, 261)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    # The cache is what makes a lone token see its context and its position.
    alone, _ = model(ids[:, 39:40])
    assert not torch.allclose(alone[:, 0], want[:, 39], atol=1e-2)


@torch.no_grad()
def test_last_logits_through_the_cache_use_the_absolute_position():
    model = context_model()
    ids = torch.tensor([PROMPT + [114, 108, 100]])
    want, _ = model(ids)
    cache = KVCache(model.config, 1, "cpu")
    model(ids[:, :-1], cache=cache)
    got, _ = model(ids[:, -1:], cache=cache)
    torch.testing.assert_close(got[0, -1], want[0, -1], atol=1e-4, rtol=0)


@torch.no_grad()
def test_cached_forward_past_the_context_is_refused():
    model = context_model()
    cache = KVCache(model.config, 1, "cpu")
    model(torch.zeros(1, 125, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="sequence of 129 tokens exceeds context_len 128"):
        model(torch.zeros(1, 4, dtype=torch.long), cache=cache)
    assert cache.pos == 125  # the refused call stored nothing
    logits, _ = model(torch.zeros(1, 3, dtype=torch.long), cache=cache)  # exactly fills it
    assert logits.shape == (1, 3, 261)
    assert cache.pos == 128
    with pytest.raises(ValueError, match="sequence of 129 tokens exceeds context_len 128"):
        model(torch.zeros(1, 1, dtype=torch.long), cache=cache)


# --- stop token and limits -----------------------------------------------------------------


@pytest.mark.parametrize("use_cache", [True, False])
def test_stop_id_ends_generation_without_being_yielded(use_cache):
    model = context_model(seed=3)  # its first 10 greedy tokens are all different
    tokens = greedy(model, n=10, use_cache=use_cache)
    assert len(set(tokens)) == 10
    assert greedy(model, n=10, stop_id=tokens[0], use_cache=use_cache) == []
    assert greedy(model, n=10, stop_id=tokens[4], use_cache=use_cache) == tokens[:4]
    absent = next(i for i in range(261) if i not in tokens)
    assert greedy(model, n=10, stop_id=absent, use_cache=use_cache) == tokens


@pytest.mark.parametrize("use_cache", [True, False])
def test_generation_stops_when_the_context_is_full(use_cache):
    model = context_model()
    torch.manual_seed(2)
    prompt = torch.randint(0, 256, (125,)).tolist()
    out = greedy(model, prompt, n=50, use_cache=use_cache)
    assert len(out) == 3
    assert greedy(model, prompt, n=2, use_cache=use_cache) == out[:2]


@pytest.mark.parametrize("length", [128, 130])
def test_prompt_that_fills_the_context_is_refused(length):
    model = context_model()
    with pytest.raises(XinslmError, match=f"prompt of {length} tokens fills the context"):
        list(generate(model, [65] * length, Sampling(max_new_tokens=5)))


def test_empty_prompt_is_refused():
    model = context_model()
    with pytest.raises(XinslmError, match="empty prompt"):
        list(generate(model, [], Sampling(max_new_tokens=5)))


def test_max_new_tokens_is_honoured():
    model = context_model()
    with pytest.raises(XinslmError, match="max_new_tokens: must be an integer >= 1, got 0"):
        greedy(model, n=0)
    assert len(greedy(model, n=7)) == 7
    assert greedy(model, n=7) == greedy(model, n=40)[:7]


# --- sample_next ---------------------------------------------------------------------------


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_temperature_zero_is_argmax():
    torch.manual_seed(3)
    for _ in range(20):
        logits = torch.randn(261)
        assert sample_next(logits, 0, None, None, gen(0)) == int(logits.argmax())
        assert sample_next(logits, 0, 5, 0.5, gen(1)) == int(logits.argmax())


def test_temperature_divides_the_logits():
    torch.manual_seed(4)
    logits = torch.randn(30)
    for t in (0.5, 2.0):
        for seed in range(50):
            want = sample_next(logits / t, 1.0, None, None, gen(seed))
            assert sample_next(logits, t, None, None, gen(seed)) == want
    logits = torch.zeros(30)
    logits[5] = 1.0
    cold = {sample_next(logits, 0.05, None, None, gen(seed)) for seed in range(100)}
    hot = {sample_next(logits, 100.0, None, None, gen(seed)) for seed in range(100)}
    assert cold == {5}
    assert len(hot) > 20


def test_top_k_one_is_argmax_whatever_the_seed():
    logits = torch.zeros(50)
    logits[17] = 0.1  # barely above the rest: plain sampling would rarely pick it
    for seed in range(30):
        for temperature in (1.0, 5.0):
            assert sample_next(logits, temperature, 1, None, gen(seed)) == 17


def test_top_k_keeps_only_the_k_likeliest():
    logits = torch.zeros(20)
    logits[[3, 11, 19]] = torch.tensor([0.3, 0.2, 0.1])
    seen = {sample_next(logits, 1.0, 3, None, gen(seed)) for seed in range(200)}
    assert seen == {3, 11, 19}
    wider = {sample_next(logits, 1.0, None, None, gen(seed)) for seed in range(200)}
    assert len(wider) > 3  # without top_k the others do come up


PROBS = [0.5, 0.3, 0.15, 0.05]


@pytest.mark.parametrize(
    "top_p, allowed",
    [
        (0.6, {0, 1}),  # id 1 follows mass 0.5 < 0.6; id 2 follows 0.8 >= 0.6
        (0.5, {0}),  # id 1 follows mass 0.5 >= 0.5: dropped
        (0.3, {0}),  # the likeliest token always stays
        (0.85, {0, 1, 2}),  # id 3 follows 0.95
        (1.0, {0, 1, 2, 3}),  # top_p 1 disables the filter
        (None, {0, 1, 2, 3}),
    ],
)
def test_top_p_drops_tokens_once_the_likelier_ones_cover_it(top_p, allowed):
    # Shuffle the ids so that the filter has to sort and scatter back correctly.
    order = [2, 0, 3, 1]  # vocab id of the i-th likeliest token
    logits = torch.full((4,), 0.0)
    for rank, vocab_id in enumerate(order):
        logits[vocab_id] = math.log(PROBS[rank])
    seen = {sample_next(logits, 1.0, None, top_p, gen(seed)) for seed in range(200)}
    assert seen == {order[rank] for rank in allowed}


def test_top_k_and_top_p_combine():
    logits = torch.log(torch.tensor([0.4, 0.25, 0.2, 0.1, 0.05]))
    # top_k=3 renormalises to [0.47, 0.29, 0.24]; top_p=0.7 then keeps ids 0 and 1 only.
    seen = {sample_next(logits, 1.0, 3, 0.7, gen(seed)) for seed in range(200)}
    assert seen == {0, 1}
