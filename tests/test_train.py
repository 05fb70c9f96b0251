"""The training step (TrainStep, the one the loop, the bench scripts and these tests use): both
optimizers learn, micro-batches add up to the batch they split, the schedule, and compiling the
model changes no result."""

from __future__ import annotations

import copy
import dataclasses
import math
import shutil

import pytest
import torch
from conftest import REPO, tiny_config, train_params

from xinslm.config import load_params
from xinslm.model import IGNORE_INDEX, ModelConfig, NanoChatModel
from xinslm.muon import orthogonalize
from xinslm.optim import lr_scale, make_optimizers, scale_adamw_lr
from xinslm.step import TrainStep

CONFIG = tiny_config(vocab_size=64)
CPU = torch.device("cpu")


def batch(seed: int = 0, rows: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    # A learnable pattern: each row counts up from a random start, modulo the vocabulary.
    g = torch.Generator().manual_seed(seed)
    counting = (torch.randint(0, 64, (rows, 1), generator=g) + torch.arange(33)) % 64
    return counting[:, :-1], counting[:, 1:]


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_both_optimizers_reduce_the_loss(optimizer: str) -> None:
    torch.manual_seed(0)
    model = NanoChatModel(CONFIG)
    params = train_params(
        optimizer=optimizer, lr=0.01, muon_lr=0.02, warmup_steps=0, max_steps=40, compile=False
    )
    step = TrainStep(model, params, CPU)
    assert len(step.optimizers) == (2 if optimizer == "muon" else 1)
    losses = [float(step([batch(i)], i)[0]) for i in range(40)]
    assert losses[-1] < 0.5 * losses[0], losses


def test_micro_batches_weigh_each_learned_target_as_one_batch_would() -> None:
    """Two micro-batches with different numbers of learned targets: the step's loss and the
    weights after it are those of the one batch they split."""
    torch.manual_seed(0)
    whole, split = NanoChatModel(CONFIG), None
    split = copy.deepcopy(whole)
    x, y = batch(0)
    y = y.clone()
    y[:2, :20] = IGNORE_INDEX  # the first micro-batch learns far fewer targets
    params = train_params(lr=0.01, warmup_steps=0, compile=False, grad_accum=2)
    one, two = TrainStep(whole, params, CPU), TrainStep(split, params, CPU)
    loss_one, tokens_one = one([(x, y)], 0)
    loss_two, tokens_two = two([(x[:4], y[:4]), (x[4:], y[4:])], 0)
    torch.testing.assert_close(loss_two, loss_one, rtol=1e-6, atol=1e-6)
    assert tokens_one == tokens_two == 8 * 32
    for a, b in zip(whole.parameters(), split.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_the_schedule_warms_up_then_decays_to_min_lr_frac() -> None:
    params = train_params(optimizer="adamw", max_steps=110, warmup_steps=10, min_lr_frac=0.1)
    assert [lr_scale(s, params) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert lr_scale(10, params) == 1.0
    assert lr_scale(60, params) == pytest.approx(0.55)  # halfway down the cosine
    assert lr_scale(110, params) == pytest.approx(0.1)
    torch.manual_seed(0)
    step = TrainStep(NanoChatModel(CONFIG), params, CPU)
    step([batch()], 4)
    (adamw,) = step.optimizers
    assert {g["lr"] for g in adamw.param_groups} == {params.lr * 0.5}


def test_muon_takes_the_block_matrices_and_adamw_the_rest() -> None:
    model = NanoChatModel(CONFIG)
    adamw, muon = make_optimizers(model, train_params(optimizer="muon"))
    in_muon = {id(p) for g in muon.param_groups for p in g["params"]}
    in_adamw = {id(p) for g in adamw.param_groups for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[i] for i in in_adamw} == {"wte.weight", "lm_head.weight"}
    assert all(names[i].startswith("blocks.") for i in in_muon)
    assert len(in_muon) + len(in_adamw) == len(list(model.parameters()))


# depth -> nanochat's AdamW factor (width / 768)^-0.5; depth 3 is 256 wide (heads of 128).
LR_FACTORS = {12: 1.0, 3: math.sqrt(3), 2: math.sqrt(6), 20: math.sqrt(0.6)}


@pytest.mark.parametrize("depth", sorted(LR_FACTORS))
def test_the_depth_dial_scales_the_adamw_lr_by_width_and_leaves_muon_alone(depth: int) -> None:
    (model_p,) = load_params(REPO / "params.yaml", "model")
    config = ModelConfig.from_params(dataclasses.replace(model_p, depth=depth), vocab_size=64)
    with torch.device("meta"):  # shapes only: d20 is 400M weights
        model = NanoChatModel(config)
    params = train_params(optimizer="muon", lr=0.004, muon_lr=0.02)
    scaled = scale_adamw_lr(params, config.n_embd)
    assert scaled == dataclasses.replace(params, lr=pytest.approx(0.004 * LR_FACTORS[depth]))
    adamw, muon = make_optimizers(model, scaled)
    assert [g["lr"] for g in adamw.param_groups] == [scaled.lr]  # the embedding and head
    assert [g["lr"] for g in muon.param_groups] == [0.02] * len(muon.param_groups)


def test_orthogonalize_gives_singular_values_near_one() -> None:
    g = torch.randn(48, 16, generator=torch.Generator().manual_seed(1))
    s = torch.linalg.svdvals(orthogonalize(g))
    assert s.shape == (16,) and bool(((s > 0.5) & (s < 1.5)).all()), s


@pytest.mark.skipif(
    not (shutil.which("c++") or shutil.which("g++")), reason="torch.compile needs a C++ compiler"
)
def test_compiled_step_gives_the_loss_of_the_plain_one() -> None:
    torch.manual_seed(0)
    plain = NanoChatModel(CONFIG)
    twin = copy.deepcopy(plain)
    losses = {}
    for name, model, compile in (("plain", plain, False), ("compiled", twin, True)):
        step = TrainStep(model, train_params(lr=0.01, warmup_steps=0, compile=compile), CPU)
        assert (step.forward is not step.ddp) == compile
        first, _ = step([batch()], 0)  # one step, then the loss it leads to
        second, _ = step([batch(1)], 1)
        losses[name] = (first, second)
    for before_after in zip(losses["plain"], losses["compiled"], strict=True):
        torch.testing.assert_close(*before_after, rtol=1e-4, atol=1e-5)


def test_tokens_per_sec_times_steady_training_only(tmp_path, monkeypatch) -> None:
    """On a clock that moves 1 s a step and 1000 s a resume-checkpoint save: the first window
    (compilation, warm-up) logs no tokens/s, and the window after a save times only its steps,
    so every logged tokens/s is the tokens of one step a second."""
    import numpy as np

    import xinslm.train
    from xinslm.batches import BlockBatches
    from xinslm.resume import Guard
    from xinslm.train import TrainJob, train_loop
    from xinslm.train_log import TrainLog

    now = [0.0]
    monkeypatch.setattr(xinslm.train, "time", type("Clock", (), {"perf_counter": lambda: now[0]}))
    save = Guard.save
    monkeypatch.setattr(
        Guard, "save", lambda self, state: (save(self, state), now.__setitem__(0, now[0] + 1000))
    )

    class Recorded(TrainLog):
        points: dict = {}

        def step(self) -> None:
            now[0] += 1.0

        def metrics(self, step: int, metrics: dict) -> None:
            self.points[step] = metrics.get("tokens_per_sec")

    p = train_params(
        max_steps=8, log_every=2, checkpoint_every=4, batch_size=2, grad_accum=1, device="cpu",
        warmup_steps=0, compile=False,
    )  # fmt: skip
    blocks = np.random.default_rng(0).integers(0, 64, (16, 33), dtype=np.uint16)
    job = TrainJob("pretrain", p, tmp_path / "base.pt", None, tmp_path / "resume.pt", {}, {})
    log = Recorded()
    train_loop(NanoChatModel(CONFIG), BlockBatches(blocks, 2, 0, False), None, job, log)
    assert log.points == {2: None, 4: 2 * 32, 6: 2 * 32, 8: 2 * 32}
