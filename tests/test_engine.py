"""The inference engine: batched decoding equals decoding alone, continuous batching, each
row's own settings, and greedy output token-identical to the reference generator."""

import pytest
import torch
from test_generate import PROMPT, context_model

from xinslm.engine import Engine
from xinslm.errors import XinslmError
from xinslm.generate import generate
from xinslm.sampling import RowSettings, Sampling, gumbel_noise, sample_rows, seed_key

GREEDY = Sampling(max_new_tokens=60, temperature=0)

# Prompts of different lengths, each with its own settings: greedy and sampled, long and short.
PROMPTS = [PROMPT, PROMPT[:3], PROMPT[:7] + [5, 6, 7, 8, 9, 10, 11], [256], PROMPT[:5], PROMPT[2:]]
SETTINGS = [
    Sampling(max_new_tokens=60, temperature=0),
    Sampling(max_new_tokens=30, temperature=1.0, top_k=None, seed=1),
    Sampling(max_new_tokens=45, temperature=0.7, top_k=20, top_p=0.9, seed=2),
    Sampling(max_new_tokens=100, temperature=0),
    Sampling(max_new_tokens=20, temperature=1.0, top_p=0.5, seed=4),
    Sampling(max_new_tokens=50, temperature=0),
]


def alone(model, prompt, sampling, stop_ids=()):
    return list(Engine(model, max_batch=1).generate(prompt, sampling, stop_ids))


@pytest.mark.parametrize("n_kv_head", [2, 4, 1], ids=["gqa", "mha", "mqa"])
def test_greedy_output_is_token_identical_to_the_reference_generator(n_kv_head):
    model = context_model(n_kv_head=n_kv_head)
    for prompt in (PROMPT, [256], PROMPT[:4]):
        want = list(generate(model, prompt, GREEDY))
        assert len(set(want)) > 3, "degenerate model: the comparison would prove nothing"
        assert alone(model, prompt, GREEDY) == want


def test_batched_decoding_equals_decoding_each_alone():
    model = context_model()
    engine = Engine(model, max_batch=4)  # six sequences, four rows: two wait, then join
    together = engine.generate_many(PROMPTS, SETTINGS)
    assert [len(t) for t in together] == [60, 30, 45, 100, 20, 50]
    assert together == [alone(model, p, s) for p, s in zip(PROMPTS, SETTINGS, strict=True)]
    # Greedy rows also match the reference generator, sampled rows differ from greedy.
    assert together[3] == list(generate(model, [256], SETTINGS[3]))
    assert together[1] != alone(model, PROMPTS[1], Sampling(max_new_tokens=30, temperature=0))
    assert not engine.busy and engine.rows == []


def test_sequences_join_and_leave_between_steps():
    model = context_model()
    engine = Engine(model, max_batch=2)
    short = engine.add(PROMPT, Sampling(max_new_tokens=3, temperature=0))
    long = engine.add(PROMPT[:4], Sampling(max_new_tokens=40, temperature=0))
    late = engine.add([256, 72], Sampling(max_new_tokens=10, temperature=0))
    engine.step()  # two rows: short and long join (prefill + one step: two tokens each)
    assert (len(short.tokens), len(long.tokens), len(late.tokens)) == (2, 2, 0)
    assert engine.rows == [short, long]
    engine.step()  # short ends, its row frees up
    assert short.finish_reason == "length" and engine.rows == [long]
    engine.step()  # late joins while long goes on; long moved to row 0
    assert engine.rows == [long, late] and len(late.tokens) == 2
    while engine.busy:
        engine.step()
    assert long.tokens == alone(model, PROMPT[:4], Sampling(max_new_tokens=40, temperature=0))
    assert late.tokens == alone(model, [256, 72], Sampling(max_new_tokens=10, temperature=0))


def test_stop_tokens_cancel_and_the_context_end_a_sequence():
    model = context_model(context_len=32)
    ref = alone(model, PROMPT, Sampling(max_new_tokens=40, temperature=0))
    assert len(ref) == 32 - len(PROMPT)  # the context ends it: 22 new tokens
    engine = Engine(model, max_batch=3)
    stop = engine.add(PROMPT, Sampling(max_new_tokens=40, temperature=0), stop_ids={ref[5]})
    cancelled = engine.add(PROMPT, Sampling(max_new_tokens=40, temperature=0))
    full = engine.add(PROMPT, Sampling(max_new_tokens=40, temperature=0))
    engine.step()
    cancelled.cancelled = True
    while engine.busy:
        engine.step()
    first_stop = ref.index(ref[5])
    assert stop.tokens == ref[:first_stop] and stop.finish_reason == "stop"
    assert cancelled.finish_reason == "cancelled" and cancelled.tokens == ref[:2]
    assert full.tokens == ref and full.finish_reason == "length"


def test_bad_prompts_are_refused():
    engine = Engine(context_model(context_len=16), max_batch=1)
    with pytest.raises(XinslmError, match="empty prompt"):
        engine.add([], GREEDY)
    with pytest.raises(XinslmError, match="prompt of 16 tokens fills the context"):
        engine.add(list(range(16)), GREEDY)
    assert not engine.busy


def test_a_seed_gives_the_same_tokens_and_another_seed_other_tokens():
    model = context_model()
    hot = [Sampling(max_new_tokens=40, temperature=1.0, top_k=None, seed=s) for s in (7, 7, 8)]
    a, b, c = (alone(model, PROMPT, s) for s in hot)
    assert a == b != c


def test_row_sampling_follows_each_rows_cuts():
    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    top = logits.argsort(-1, descending=True)
    temperature = torch.tensor([0.0, 1.0, 1.0, 1.0])
    top_k = torch.tensor([50, 1, 3, 50])
    top_p = torch.tensor([float("inf"), float("inf"), float("inf"), 1e-6])
    seen = [set() for _ in range(4)]
    for drawn in range(200):
        settings = RowSettings(temperature, top_k, top_p, torch.arange(4) * 7919)
        picks = sample_rows(logits, settings, torch.full((4,), drawn))
        for row, pick in enumerate(picks.tolist()):
            seen[row].add(pick)
    greedy = int(logits[0].argmax())
    assert seen[0] == {greedy}  # temperature 0
    assert seen[1] == {int(top[1, 0])}  # top_k 1
    assert seen[2] == set(top[2, :3].tolist())  # top_k 3: all three come up, nothing else
    assert seen[3] == {int(top[3, 0])}  # a tiny top_p keeps the likeliest only


def test_gumbel_noise_is_a_function_of_seed_drawn_and_token():
    ids = torch.arange(1000)[None]
    a = gumbel_noise(torch.tensor([5]), torch.tensor([3]), ids)
    assert torch.equal(a, gumbel_noise(torch.tensor([5]), torch.tensor([3]), ids))
    assert not torch.equal(a, gumbel_noise(torch.tensor([6]), torch.tensor([3]), ids))
    assert not torch.equal(a, gumbel_noise(torch.tensor([5]), torch.tensor([4]), ids))
    # Gumbel(0, 1): mean is the Euler-Mascheroni constant, variance pi^2 / 6.
    keys = torch.tensor([seed_key(s) for s in range(50)])
    many = gumbel_noise(keys, torch.zeros(50, dtype=torch.long), ids.expand(50, -1))
    assert abs(float(many.mean()) - 0.5772) < 0.02
    assert abs(float(many.var()) - 1.6449) < 0.05
    assert len({seed_key(s) for s in range(1000)}) == 1000
    assert 0 <= seed_key(-1) < 2**32 and 0 <= seed_key(2**63 - 1) < 2**32


def test_row_sampling_draws_tokens_at_their_probabilities():
    """4,000 draws of one row (drawn 0..3999) come up at softmax(logits / temperature)."""
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    n = 4000
    logits = (probs.log() * 0.5).expand(n, -1)  # at temperature 0.5: softmax gives probs
    ones = torch.ones(n)
    settings = RowSettings(
        ones * 0.5, torch.full((n,), 4), ones * float("inf"), torch.full((n,), seed_key(3))
    )
    picks = sample_rows(logits, settings, torch.arange(n))
    freq = torch.bincount(picks, minlength=4) / n
    assert torch.allclose(freq, probs, atol=0.025), freq


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_the_cache_is_bfloat16_and_graphs_match_eager():
    model = context_model().cuda()
    graphed = Engine(model, max_batch=4)
    assert graphed.use_graphs and graphed.k.dtype == graphed.v.dtype == torch.bfloat16
    assert next(model.parameters()).dtype == torch.bfloat16
    eager = Engine(model, max_batch=4, graphs=False)
    want = eager.generate_many(PROMPTS[:4], SETTINGS[:4])
    assert graphed.generate_many(PROMPTS[:4], SETTINGS[:4]) == want
    assert [len(t) for t in want] == [60, 30, 45, 100]


def test_sampling_without_cuts_skips_the_sort_and_gives_the_same_tokens():
    torch.manual_seed(0)
    logits = torch.randn(3, 300)
    settings = RowSettings(
        torch.tensor([0.0, 0.7, 1.3]), torch.full((3,), 300), torch.full((3,), float("inf")),
        torch.tensor([seed_key(s) for s in (1, 2, 3)]),
    )  # fmt: skip
    for drawn in range(50):
        n = torch.full((3,), drawn)
        cut = sample_rows(logits, settings, n)
        assert torch.equal(cut, sample_rows(logits, settings, n, cuts=False))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_on_a_second_gpu_graphs_match_eager_whichever_device_is_current():
    model = context_model().to("cuda:1")
    assert torch.cuda.current_device() == 0
    eager = Engine(model, max_batch=4, graphs=False).generate_many(PROMPTS[:4], SETTINGS[:4])
    graphed = Engine(model, max_batch=4).generate_many(PROMPTS[:4], SETTINGS[:4])
    assert graphed == eager and [len(t) for t in eager] == [60, 30, 45, 100]
