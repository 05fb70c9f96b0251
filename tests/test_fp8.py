"""Float8 training (pretrain.fp8, sft.fp8): which layers it converts, that nothing else
changes, and a clear error where it cannot run (GPU figures: bench/RESULTS.md)."""

from __future__ import annotations

import pytest
import torch
from conftest import train_params

from xinslm.errors import XinslmError
from xinslm.model import ModelConfig, NanoChatModel
from xinslm.step import TrainStep

pytest.importorskip("torchao", reason="fp8 needs torchao (a dev dependency: make .venv)")

from torchao.float8.float8_linear import Float8Linear  # noqa: E402

from xinslm.fp8 import to_float8  # noqa: E402


def model(vocab_size: int, n_embd: int = 128) -> NanoChatModel:
    torch.manual_seed(0)
    config = ModelConfig(
        context_len=16, n_layer=2, n_head=2, n_kv_head=1, n_embd=n_embd, vocab_size=vocab_size
    )
    return NanoChatModel(config)


def float8_layers(m: NanoChatModel) -> set[str]:
    return {name for name, module in m.named_modules() if isinstance(module, Float8Linear)}


def test_the_big_linear_layers_become_float8_and_the_parameters_stay() -> None:
    m = model(vocab_size=272)  # divisible by 16: the head converts too
    before = {name: id(p) for name, p in m.named_parameters()}
    to_float8(m)
    # q, k and v stay: the model projects them with their concatenated weights, in bf16.
    blocks = {f"blocks.{i}.{n}" for i in (0, 1) for n in ("attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    assert float8_layers(m) == blocks | {"lm_head"}
    assert {name: id(p) for name, p in m.named_parameters()} == before  # same tensors
    # A vocabulary of 265 (the byte tokenizer's) is not divisible by 16: the head stays, as
    # every layer of a model 64 wide (below 128).
    other = model(vocab_size=265)
    to_float8(other)
    assert float8_layers(other) == blocks
    narrow = model(vocab_size=272, n_embd=64)
    to_float8(narrow)
    assert float8_layers(narrow) == set()


def test_fp8_on_a_cpu_is_refused_before_any_work() -> None:
    m = model(vocab_size=272)
    with pytest.raises(XinslmError, match=r"fp8: .*compute capability 8.9.*set fp8: false"):
        TrainStep(m, train_params(fp8=True, compile=False, device="cpu"), torch.device("cpu"))
    assert float8_layers(m) == set()  # refused before converting anything
