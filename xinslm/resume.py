"""Resume checkpoints: all a training run needs to go on exactly where it stopped.

A run writes one every `checkpoint_every` steps (and when SIGTERM or Ctrl-C stops it) to
`checkpoints/resume/<stage>.pt`, outside the stage's DVC outputs, so it survives the stage
being rerun. It holds the weights, the optimizer state, the step, the RNG states of python,
numpy and torch, the data position and the logging state, plus the run's identity (model
config, the params that shape the weights, the data): a rerun with another identity is
refused, naming the difference, rather than mixing two runs.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from xinslm.checkpoint import load_checkpoint, save_checkpoint
from xinslm.errors import XinslmError

# Params that change how a run is watched or where it runs, not the weights it computes:
# they may differ between a run and its resumption.
FREE_PARAMS = ("eval_every", "eval_batches", "checkpoint_every", "device", "compile")


def rng_state() -> dict:
    """The RNG states of python, numpy and torch (CPU and every GPU), as plain values."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _flatten(value: object, prefix: str = "") -> dict[str, object]:
    if not isinstance(value, dict):
        return {prefix: value}
    out: dict[str, object] = {}
    for key, item in value.items():
        out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return out


def differences(saved: dict, current: dict) -> list[str]:
    """'key: saved X, now Y' for every leaf where two nested dicts differ."""
    old, new = _flatten(saved), _flatten(current)
    return [
        f"{key}: {old.get(key, '(none)')!r} then, {new.get(key, '(none)')!r} now"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]


def load_resume(path: str | Path, identity: dict) -> dict | None:
    """The resume checkpoint at `path` if there is one, checked against this run's identity."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = load_checkpoint(path)
    except XinslmError as e:
        raise XinslmError(f"{e}; delete it to start the run over") from None
    if state.get("kind") != "resume":
        raise XinslmError(f"{path}: not a resume checkpoint; delete it to start the run over")
    diffs = differences(state["identity"], identity)
    if diffs:
        more = f" and {len(diffs) - 3} more" if len(diffs) > 3 else ""
        raise XinslmError(
            f"{path}: saved by a run with other settings ({'; '.join(diffs[:3])}{more}): "
            f"restore them to resume that run, or delete {path} to start over"
        )
    return state


def save_resume(path: str | Path, **contents: object) -> None:
    save_checkpoint(path, kind="resume", **contents)
