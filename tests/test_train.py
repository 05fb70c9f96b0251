"""The training step: both optimizers learn, and compiling the model changes no result."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch

from xinslm.config import TrainParams
from xinslm.model import ModelConfig, NanoChatModel
from xinslm.muon import orthogonalize
from xinslm.train import make_optimizers

CONFIG = ModelConfig(context_len=32, n_layer=2, n_head=2, n_kv_head=1, n_embd=32, vocab_size=64)


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    # A learnable pattern: each row counts up from a random start, modulo the vocabulary.
    g = torch.Generator().manual_seed(seed)
    rows = (torch.randint(0, 64, (8, 1), generator=g) + torch.arange(33)) % 64
    return rows[:, :-1], rows[:, 1:]


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_both_optimizers_reduce_the_loss(optimizer: str) -> None:
    torch.manual_seed(0)
    model = NanoChatModel(CONFIG)
    params = TrainParams(optimizer=optimizer, lr=0.01, muon_lr=0.02)
    optimizers = make_optimizers(model, params, torch.device("cpu"))
    assert len(optimizers) == (2 if optimizer == "muon" else 1)
    losses = []
    for step in range(40):
        x, y = batch(step)
        _, loss = model(x, y)
        loss.backward()
        for o in optimizers:
            o.step()
        model.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_muon_takes_the_block_matrices_and_adamw_the_rest() -> None:
    model = NanoChatModel(CONFIG)
    adamw, muon = make_optimizers(model, TrainParams(optimizer="muon"), torch.device("cpu"))
    in_muon = {id(p) for g in muon.param_groups for p in g["params"]}
    in_adamw = {id(p) for g in adamw.param_groups for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[i] for i in in_adamw} == {"wte.weight", "lm_head.weight"}
    assert all(names[i].startswith("blocks.") for i in in_muon)
    assert len(in_muon) + len(in_adamw) == len(list(model.parameters()))


def test_orthogonalize_gives_singular_values_near_one() -> None:
    g = torch.randn(48, 16, generator=torch.Generator().manual_seed(1))
    s = torch.linalg.svdvals(orthogonalize(g))
    assert s.shape == (16,) and bool(((s > 0.5) & (s < 1.5)).all()), s


@pytest.mark.skipif(
    not (shutil.which("c++") or shutil.which("g++")), reason="torch.compile needs a C++ compiler"
)
def test_compiled_model_gives_the_loss_of_the_plain_one() -> None:
    torch.manual_seed(0)
    plain = NanoChatModel(CONFIG)
    twin = copy.deepcopy(plain)
    compiled = torch.compile(twin)
    params = TrainParams(lr=0.01)
    losses = {}
    for name, model, owner in (("plain", plain, plain), ("compiled", compiled, twin)):
        (optimizer,) = make_optimizers(owner, params, torch.device("cpu"))
        x, y = batch()
        _, loss = model(x, y)
        loss.backward()
        optimizer.step()  # one step, then the loss it leads to
        with torch.no_grad():
            _, after = model(*batch(1))
        losses[name] = (loss.detach(), after)
    for before_after in zip(losses["plain"], losses["compiled"], strict=True):
        torch.testing.assert_close(*before_after, rtol=1e-4, atol=1e-5)
