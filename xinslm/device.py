"""Where and in what precision the model runs: device choice, bf16 autocast and TF32 on CUDA,
whether to compile, and seeding. Shared by training, evaluation and the CLI."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

from xinslm.errors import XinslmError


def pick_device(name: str) -> torch.device:
    """'auto' is cuda when present, else cpu; anything else is taken as asked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise XinslmError(f"device '{name}' asked for, but no CUDA GPU is visible to torch")
    return torch.device(name)


def setup_device(device: torch.device) -> None:
    if device.type == "cuda":
        # fp32 matmuls (outside bf16 autocast) may use TF32 tensor cores.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; float32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def use_compile(compile: str | bool, device: torch.device) -> bool:
    """The compile param: auto means on CUDA (where it pays for its start-up), off elsewhere."""
    return device.type == "cuda" if compile == "auto" else bool(compile)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
