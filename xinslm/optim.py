"""The optimizers and the learning-rate schedule of a training stage.

AdamW with weight decay on the matrices only; with optimizer: muon, Muon takes the matrices
inside the blocks and AdamW keeps the embedding and the head (nanochat's split). Every group
follows one schedule: linear warmup, then cosine decay to min_lr_frac of its own peak.
With model.depth set, the stages scale the AdamW lr by the model's width (`scale_adamw_lr`).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from xinslm.config import TrainParams
from xinslm.model import NanoChatModel
from xinslm.muon import Muon


def make_optimizers(
    model: NanoChatModel, params: TrainParams, compiled: bool = False
) -> list[torch.optim.Optimizer]:
    """AdamW (fused on CUDA), plus Muon for the block matrices with optimizer: muon. Muon's
    orthogonalization is compiled when the model is (`compiled`)."""
    muon = params.optimizer == "muon"
    hidden = [p for p in model.blocks.parameters() if p.dim() == 2] if muon else []
    taken = {id(p) for p in hidden}
    rest = [p for p in model.parameters() if id(p) not in taken]
    groups = [
        {"params": [p for p in rest if p.dim() >= 2], "weight_decay": params.weight_decay},
        {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0},
    ]
    adamw = torch.optim.AdamW(
        [g for g in groups if g["params"]],
        lr=params.lr,
        betas=(params.beta1, params.beta2),
        fused=next(model.parameters()).is_cuda,
    )
    optimizers: list[torch.optim.Optimizer] = [adamw]
    if muon:
        optimizers.append(
            Muon(hidden, lr=params.muon_lr, momentum=params.muon_momentum, compiled=compiled)
        )
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["peak_lr"] = group["lr"]  # the schedule scales each group from its own peak
    return optimizers


# nanochat tuned its AdamW learning rates on a 768-wide model (d12) and scales them by
# 1/sqrt(width / 768) at other widths (gpt.py setup_optimizer); Muon's lr it leaves alone.
REFERENCE_WIDTH = 768


def width_lr_scale(n_embd: int) -> float:
    """nanochat's factor on the AdamW lrs of a model n_embd wide: 1 at 768, sqrt(3) at 256."""
    return (n_embd / REFERENCE_WIDTH) ** -0.5


def scale_adamw_lr(params: TrainParams, n_embd: int) -> TrainParams:
    """`params` with lr (AdamW's) scaled for a model n_embd wide, so that the lr set is that
    of a 768-wide model (the stages do this when model.depth is set). muon_lr is unchanged.
    Scaled here rather than inside make_optimizers, so the lr logged and the train_params
    saved in the checkpoint are the lr the optimizer used."""
    return dataclasses.replace(params, lr=params.lr * width_lr_scale(n_embd))


def lr_scale(step: int, params: TrainParams) -> float:
    """The schedule at `step`, as a fraction of each group's peak lr: linear warmup to 1, then
    cosine decay to min_lr_frac."""
    if step < params.warmup_steps:
        return (step + 1) / params.warmup_steps
    span = max(1, params.max_steps - params.warmup_steps)
    progress = min(1.0, (step - params.warmup_steps) / span)
    return params.min_lr_frac + (1 - params.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress))


def set_lr(optimizers: list[torch.optim.Optimizer], scale: float) -> None:
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = group["peak_lr"] * scale
