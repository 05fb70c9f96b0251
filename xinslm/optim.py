"""The optimizers and the learning-rate schedule of a training stage.

AdamW with weight decay on the matrices only; with optimizer: muon, Muon takes the matrices
inside the blocks and AdamW keeps the embedding and the head (nanochat's split). Every group
follows one schedule: linear warmup, then cosine decay to min_lr_frac of its own peak.
"""

from __future__ import annotations

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
