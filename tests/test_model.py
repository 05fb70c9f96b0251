import math

import pytest
import torch
import torch.nn.functional as F
from conftest import train_on

from xinslm.model import (
    CausalSelfAttention,
    ModelConfig,
    NanoChatModel,
    apply_rotary,
    norm,
    rotary_tables,
)

TINY = dict(vocab_size=261, context_len=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=64)


def test_model_config_needs_the_shape_and_defaults_the_rest():
    config = ModelConfig(**TINY)
    assert (config.logit_softcap, config.dropout, config.rope_base) == (15.0, 0.0, 10000.0)
    assert ModelConfig(**config.to_dict()) == config
    for missing in TINY:
        with pytest.raises(TypeError, match=missing):
            ModelConfig(**{k: v for k, v in TINY.items() if k != missing})
    with pytest.raises(TypeError):
        ModelConfig(32, 2, 4, 2, 64, vocab_size=261)  # keywords only: no order to get wrong


def tiny_model(**overrides):
    torch.manual_seed(0)
    return NanoChatModel(ModelConfig(**{**TINY, **overrides}))


@torch.no_grad()
def randomize_projections(model):
    """The init zeroes every output projection; give them weights so attention shows."""
    for block in model.blocks:
        torch.nn.init.normal_(block.attn.c_proj.weight, std=0.1)
        torch.nn.init.normal_(block.mlp.c_proj.weight, std=0.1)


def test_gqa_shapes():
    model = tiny_model()
    attn = model.blocks[0].attn
    assert attn.c_q.weight.shape == (64, 64)
    assert attn.c_k.weight.shape == (32, 64)
    assert attn.c_v.weight.shape == (32, 64)
    logits, loss = model(torch.randint(0, 261, (3, 10)))
    assert logits.shape == (3, 10, 261)
    assert loss is None


def test_plain_multi_head_attention_works_too():
    model = tiny_model(n_kv_head=4)
    assert model.blocks[0].attn.c_k.weight.shape == (64, 64)
    logits, _ = model(torch.randint(0, 261, (2, 7)))
    assert logits.shape == (2, 7, 261)


def reference_attention(attn, x, cos, sin):
    """Attention written out by hand: each k/v head repeated for its group of query heads."""
    B, T, C = x.shape
    H, KV, D = attn.n_head, attn.n_kv_head, C // attn.n_head
    q = norm(apply_rotary(attn.c_q(x).view(B, T, H, D), cos, sin)).transpose(1, 2)
    k = norm(apply_rotary(attn.c_k(x).view(B, T, KV, D), cos, sin)).transpose(1, 2)
    v = attn.c_v(x).view(B, T, KV, D).transpose(1, 2)
    k, v = k.repeat_interleave(H // KV, dim=1), v.repeat_interleave(H // KV, dim=1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(D)
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    weights = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
    return attn.c_proj((weights @ v).transpose(1, 2).reshape(B, T, C))


@pytest.mark.parametrize("n_kv_head", [1, 2, 4])
def test_attention_matches_repeated_kv_reference(n_kv_head):
    torch.manual_seed(0)
    attn = CausalSelfAttention(ModelConfig(**{**TINY, "n_kv_head": n_kv_head}))
    x = torch.randn(2, 9, 64)
    cos, sin = (t[None] for t in rotary_tables(9, 16, 10000.0))  # (1, T, D)
    with torch.no_grad():
        got = attn(x, cos, sin)
        want = reference_attention(attn, x, cos, sin)
    assert got.shape == (2, 9, 64)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@torch.no_grad()
def test_softcap_bounds_the_logits():
    model = tiny_model(logit_softcap=2.0)
    model.lm_head.weight *= 1000
    logits, _ = model(torch.randint(0, 261, (2, 16)))
    assert logits.abs().max() <= 2.0
    assert logits.abs().max() > 1.9


@torch.no_grad()
def test_loss_ignores_minus_100_targets():
    model = tiny_model()
    randomize_projections(model)
    input_ids = torch.randint(0, 261, (2, 8))
    targets = torch.randint(0, 261, (2, 8))
    targets[0, :5] = -100
    targets[1, 6] = -100
    logits, _ = model(input_ids)
    nothing, loss = model(input_ids, targets)
    assert nothing is None  # training gets the loss only, never the float32 logits
    keep = targets != -100
    log_probs = logits.log_softmax(dim=-1)[keep]
    want = -log_probs.gather(1, targets[keep][:, None]).mean()
    assert keep.sum() == 10
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(loss, F.cross_entropy(logits[keep], targets[keep]))


@torch.no_grad()
def test_loss_with_no_targets_is_zero():
    model = tiny_model()
    _, loss = model(torch.randint(0, 261, (2, 8)), torch.full((2, 8), -100))
    assert loss.item() == 0.0


@torch.no_grad()
def test_future_tokens_do_not_change_earlier_logits():
    model = tiny_model()
    randomize_projections(model)
    a = torch.randint(0, 261, (1, 12))
    b = a.clone()
    b[0, 6] = (a[0, 6] + 1) % 261
    logits_a, _ = model(a)
    logits_b, _ = model(b)
    torch.testing.assert_close(logits_a[:, :6], logits_b[:, :6], atol=1e-6, rtol=0)
    assert not torch.allclose(logits_a[:, 7:], logits_b[:, 7:], atol=1e-4)


def test_tiny_model_overfits_one_batch():
    model = tiny_model()
    torch.manual_seed(1)
    batch = torch.randint(0, 261, (4, 33))
    inputs, targets = batch[:, :-1], batch[:, 1:]
    _, first = model(inputs, targets)
    assert abs(first.item() - math.log(261)) < 0.05
    assert train_on(model, inputs, targets, steps=150, lr=1e-2) < 0.1


def test_longer_than_context_is_refused():
    model = tiny_model()
    with pytest.raises(ValueError, match="sequence of 33 tokens exceeds context_len 32"):
        model(torch.zeros(1, 33, dtype=torch.int64))


def test_rotary_turns_each_channel_pair_by_its_positions_angle():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 3, 8)  # (B, T, H, D): pairs (i, i + 4) share an angle
    cos, sin = rotary_tables(5, 8, 100.0)
    got = apply_rotary(x, cos[None], sin[None])
    angle = torch.arange(5.0)[:, None] / 100.0 ** (torch.arange(0, 8, 2) / 8)  # (T, 4)
    c, s = angle.cos()[None, :, None], angle.sin()[None, :, None]
    x1, x2 = x[..., :4], x[..., 4:]
    torch.testing.assert_close(got, torch.cat([x1 * c + x2 * s, x2 * c - x1 * s], -1))
    assert torch.equal(got[:, 0], x[:, 0])  # position 0: no turn
    torch.testing.assert_close(got.norm(dim=-1), x.norm(dim=-1))  # a rotation keeps lengths


def test_one_qkv_matmul_projects_as_the_three_weights_would() -> None:
    # Training projects q, k and v with one matmul of the concatenated weights: each must
    # come out as its own weight's projection, turned and normalized (q and k) or not (v).
    torch.manual_seed(0)
    attn = NanoChatModel(ModelConfig(**TINY)).blocks[0].attn
    x = torch.randn(2, 5, 64)
    cos, sin = rotary_tables(5, 16, 10000.0)
    cos, sin = cos[None], sin[None]
    q, k, v = attn._qkv(x, cos, sin)
    want_q = F.rms_norm(apply_rotary(attn.c_q(x).view(2, 5, 4, 16), cos, sin), (16,))
    want_k = F.rms_norm(apply_rotary(attn.c_k(x).view(2, 5, 2, 16), cos, sin), (16,))
    torch.testing.assert_close(q, want_q)
    torch.testing.assert_close(k, want_k)
    torch.testing.assert_close(v, attn.c_v(x).view(2, 5, 2, 16))
