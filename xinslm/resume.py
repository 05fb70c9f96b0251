"""Guard: the resume checkpoints, stop requests and NaN guard of one training run.

Every `checkpoint_every` steps, and when SIGTERM or Ctrl-C asks the run to stop, the guard
saves the TrainState (plus the RNG states) to `checkpoints/resume/<stage>.pt`, outside the
stage's DVC outputs. A rerun of the same run continues from it and ends bit-identical to an
uninterrupted run (on the CPU); a completed run deletes it. The file carries the run's
identity (model, params that shape the weights, data, code, processes): a run with another
identity never uses it, says so in one line and starts over, and its own first resume
checkpoint replaces the stale one. Only a state whose losses and weights are finite is saved;
a NaN or inf stops the run naming the step.
"""

from __future__ import annotations

import hashlib
import random
import signal
import sys
import threading
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from xinslm import distributed
from xinslm.checkpoint import load_checkpoint, save_checkpoint
from xinslm.errors import XinslmError
from xinslm.train_state import NonFiniteLoss, TrainState

if TYPE_CHECKING:
    from xinslm.train import TrainJob

# Params that change how a run is watched or where it runs, not the weights it computes:
# they may differ between a run and its resumption.
FREE_PARAMS = ("eval_every", "eval_batches", "checkpoint_every", "device", "compile")
FORMAT = 2  # of the resume checkpoint's contents; a file of another format is not used


class TrainingStopped(XinslmError):
    """SIGTERM or Ctrl-C stopped a run after it saved a resume checkpoint."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention: 143 for SIGTERM, 130 for SIGINT


class Guard:
    """Use as a context manager around the loop: `resume(state)` before the first step,
    `after_step(state)` after each, `finish()` when the run is complete. Without a path
    there are no resume checkpoints, and SIGTERM and Ctrl-C act as they always do."""

    def __init__(self, job: TrainJob, model_config: dict) -> None:
        self.name, self.params = job.name, job.params
        self.identity = run_identity(job, model_config)
        self.path = Path(job.resume_path) if job.resume_path is not None else None
        self.extra = job.checkpoint_extra  # the tokenizer, so the file loads as a checkpoint
        self.world = distributed.current()
        self.saved_step: int | None = None  # the step of the resume checkpoint of this run
        self.stop_signal: int | None = None
        self._handlers: dict = {}

    def __enter__(self) -> Guard:
        # Signal handlers can only be set from the main thread.
        if self.path is not None and threading.current_thread() is threading.main_thread():
            self._handlers = {s: signal.signal(s, self._request_stop) for s in STOP_SIGNALS}
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, tb: object) -> None:
        for s, handler in self._handlers.items():
            signal.signal(s, handler)
        if isinstance(error, NonFiniteLoss):
            raise XinslmError(f"{self.name}: {error}{self._kept()}") from None

    def _request_stop(self, signum: int, frame: object) -> None:
        """Stop at the next step boundary, where a resume checkpoint can be saved; a second
        Ctrl-C stops at once."""
        if self.stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.stop_signal = signum

    def resume(self, state: TrainState) -> None:
        """Load this run's resume checkpoint into `state`, if there is one."""
        saved = self._load()
        if saved is None:
            return
        state.load_state_dict(saved)
        set_rng_state(saved["rank_rng"][self.world.rank] if self.world.size > 1 else saved["rng"])
        self.saved_step = state.step
        print(f"{self.name}: resuming from {self.path} at step {state.step}", flush=True)

    def _load(self) -> dict | None:
        if self.path is None or not self.path.exists():
            return None
        try:
            saved = load_checkpoint(self.path)
        except XinslmError as e:
            return self._start_over(f"{e}")
        if saved.get("kind") != "resume" or "identity" not in saved:
            return self._start_over(f"{self.path}: not a resume checkpoint")
        diffs = differences(saved["identity"], self.identity)
        if diffs:
            more = f" and {len(diffs) - 3} more" if len(diffs) > 3 else ""
            return self._start_over(
                f"{self.path} is from a run with other settings ({'; '.join(diffs[:3])}{more})"
            )
        return saved

    def _start_over(self, why: str) -> None:
        print(f"{self.name}: {why}; starting over (it is replaced at the first save)", flush=True)

    def after_step(self, state: TrainState) -> bool:
        """Save a resume checkpoint when one is due or a stop was asked for; then stop.
        True when it saved (the loop leaves the save's time out of tokens/s)."""
        if self.path is None or state.step == self.params.max_steps:
            return False
        stopping = self.stop_signal is not None
        if self.world.size > 1:
            # All processes stop at the same step. They agree at log points only (asking
            # every step would wait for the GPUs every step); torchrun passes SIGTERM to
            # them all and allows 30 s before it kills them.
            at_log_point = state.step % self.params.log_every == 0
            stopping = at_log_point and distributed.any_rank(stopping, state.window.device)
        every = self.params.checkpoint_every
        saving = stopping or bool(every and state.step % every == 0)
        if saving:
            self.save(state)
        if stopping:
            signum = self.stop_signal or signal.SIGTERM  # (another process got it)
            raise TrainingStopped(
                f"{self.name}: stopped by {signal.Signals(signum).name} at step {state.step}; "
                f"saved {self.path}: run the stage again (dvc repro) to continue from there",
                signum,
            )
        return saving

    def save(self, state: TrainState) -> None:
        """Save `state`, if its losses so far and its weights are finite."""
        state.check_window()
        if not state.weights_finite():
            raise XinslmError(
                f"{self.name}: weights became non-finite by step {state.step}{self._kept()}"
            )
        rngs = distributed.gather(rng_state())  # each process's dropout stream goes on
        if self.world.main:
            ranks = {"rank_rng": rngs} if self.world.size > 1 else {}
            contents = {**state.state_dict(), "rng": rngs[0], **ranks}
            save_checkpoint(
                self.path, **self.extra, **contents, kind="resume", identity=self.identity
            )
        distributed.barrier()  # no process goes on (or stops) before the file is there
        self.saved_step = state.step

    def finish(self) -> None:
        """The run is complete: its resume checkpoint is of no more use."""
        if self.path is not None and self.world.main:
            self.path.unlink(missing_ok=True)

    def _kept(self) -> str:
        if self.saved_step is None or not self.path.exists():
            return ""
        return f"; the last good state is {self.path} (step {self.saved_step})"


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def run_identity(job: TrainJob, model_config: dict) -> dict:
    """What makes two runs the same run: the stage, the model, every param that shapes the
    weights, the data, the code and the number of processes."""
    settings = {k: v for k, v in asdict(job.params).items() if k not in FREE_PARAMS}
    return {
        "format": FORMAT,
        "stage": job.name,
        "model": model_config,
        "params": settings,
        "data": job.data,
        "code": code_fingerprint(),
        "processes": distributed.current().size,
    }


def code_fingerprint() -> str:
    """sha256 of the running script and of every xinslm module loaded: a resume checkpoint
    of other code is not used (DVC reruns a stage whose code changed)."""
    files = {Path(sys.argv[0]).name: Path(sys.argv[0])} if Path(sys.argv[0]).is_file() else {}
    for name, module in list(sys.modules.items()):
        if (name == "xinslm" or name.startswith("xinslm.")) and getattr(module, "__file__", None):
            files[name] = Path(module.__file__)
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name].read_bytes() + b"\0")
    return digest.hexdigest()[:16]


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
    """'key: X then, Y now' for every leaf where two nested dicts differ."""
    old, new = _flatten(saved), _flatten(current)
    return [
        f"{key}: {old.get(key, '(none)')!r} then, {new.get(key, '(none)')!r} now"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]
