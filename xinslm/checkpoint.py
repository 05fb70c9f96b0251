"""Checkpoints: written atomically, loaded without running any code from the file.

A checkpoint is a dict of tensors and plain Python values only, so `torch.load(...,
weights_only=True)` can read it: a crafted pickle that tries to execute code is refused.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import torch

from xinslm.artifact import check_tokenizer
from xinslm.atomic import atomic_file
from xinslm.errors import XinslmError
from xinslm.model import ModelConfig, NanoChatModel

FORMAT = "xinslm-checkpoint-1"
REQUIRED = ("format", "model", "model_config", "tokenizer", "step")


def save_checkpoint(path: str | Path, **contents: object) -> None:
    """Save `contents` (model, config, tokenizer, optimizer, step, params, ...) atomically."""
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        # Saving through a file object names the archive inside "archive" rather than after
        # the temporary file, so the same contents always give the same bytes (and DVC can
        # see that a rerun changed nothing).
        torch.save(_canonical({"format": FORMAT, **contents}), f)


def _canonical(value: object) -> object:
    """A copy with fresh containers and interned strings. Pickle writes a repeated object once
    and refers back to it, so which equal values are the same object changes the bytes; after
    this, equal contents give equal bytes whether they were built here or loaded from a
    resume checkpoint."""
    if isinstance(value, dict):
        return {_canonical(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_canonical(v) for v in value)
    if isinstance(value, str):
        return sys.intern(value)
    return value


def load_checkpoint(path: str | Path, tokenizer: dict | None = None) -> dict:
    """Load a checkpoint safely; with `tokenizer`, refuse one made with another tokenizer."""
    path = Path(path)
    if not path.is_file():
        raise XinslmError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # weights_only refuses anything but tensors and plain values: a corrupt file, or one
        # holding objects that would run code when unpickled. Nothing from it was executed.
        raise XinslmError(
            f"{path}: refused to load: not a plain xinslm checkpoint "
            "(corrupt, or holding objects that would run code on load)"
        ) from None
    except Exception as e:  # torch raises many kinds on a truncated or garbled file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise XinslmError(f"{path}: unreadable or truncated checkpoint ({first})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise XinslmError(f"{path}: not an xinslm checkpoint")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise XinslmError(f"{path}: incomplete checkpoint (missing {', '.join(missing)})")
    if tokenizer is not None:
        check_tokenizer(path, ckpt["tokenizer"], tokenizer)
    return ckpt


def model_from_checkpoint(ckpt: dict) -> NanoChatModel:
    """Build the model with the checkpoint's own config and load its weights."""
    model = NanoChatModel(ModelConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model
