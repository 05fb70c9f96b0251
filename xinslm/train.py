"""One training loop for both stages: AdamW, warmup then cosine decay, gradient accumulation,
clipping, periodic val loss, mixed precision and compile on GPU, metrics through dvclive,
data-parallel over several processes (xinslm.distributed), and resume checkpoints from which
a killed run continues exactly (xinslm.resume)."""

from __future__ import annotations

import contextlib
import itertools
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from xinslm import distributed
from xinslm.checkpoint import save_checkpoint
from xinslm.config import TrainParams
from xinslm.data import Batch, BlockBatches, ChatBatches, Prefetcher
from xinslm.errors import XinslmError
from xinslm.model import IGNORE_INDEX, NanoChatModel
from xinslm.muon import Muon
from xinslm.resume import FREE_PARAMS, load_resume, rng_state, save_resume, set_rng_state
from xinslm.tokens import atomic_dir


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    """'auto' is cuda when present, else cpu; anything else is taken as asked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise XinslmError(f"device '{name}' asked for, but no CUDA GPU is visible to torch")
    return torch.device(name)


def lr_scale(step: int, params: TrainParams) -> float:
    """The schedule, as a fraction of each optimizer's peak lr: linear warmup to 1, then
    cosine decay to min_lr_frac."""
    if step < params.warmup_steps:
        return (step + 1) / params.warmup_steps
    span = max(1, params.max_steps - params.warmup_steps)
    progress = min(1.0, (step - params.warmup_steps) / span)
    return params.min_lr_frac + (1 - params.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress))


def lr_at(step: int, params: TrainParams) -> float:
    """AdamW's learning rate at `step`: params.lr times the schedule."""
    return params.lr * lr_scale(step, params)


def make_optimizers(
    model: NanoChatModel, params: TrainParams, device: torch.device
) -> list[torch.optim.Optimizer]:
    """AdamW, with weight decay on the matrices only. With optimizer: muon, Muon takes the
    matrices inside the blocks and AdamW keeps the embedding and the head (nanochat's split)."""
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
        fused=device.type == "cuda",
    )
    optimizers: list[torch.optim.Optimizer] = [adamw]
    if muon:
        optimizers.append(
            Muon(
                hidden,
                lr=params.muon_lr,
                momentum=params.muon_momentum,
                compiled=use_compile(params, device),
            )
        )
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["peak_lr"] = group["lr"]  # the schedule scales each group from its own peak
    return optimizers


def use_compile(params: TrainParams, device: torch.device) -> bool:
    """compile: auto means on CUDA (where it pays for its start-up), off elsewhere."""
    return device.type == "cuda" if params.compile == "auto" else bool(params.compile)


def setup_device(device: torch.device) -> None:
    if device.type == "cuda":
        # fp32 matmuls (outside bf16 autocast) may use TF32 tensor cores.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast_for(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Iterator[Batch], device: torch.device) -> float:
    """Mean loss per learned target over the given batches (with several processes: over the
    batches of all of them, each process passing its own)."""
    model.eval()
    total, count = 0.0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with autocast_for(device):
            _, loss = model(x, y)
        n = int((y != IGNORE_INDEX).sum())
        total, count = total + float(loss) * n, count + n
    model.train()
    if distributed.current().size > 1:
        sums = torch.tensor([total, count], dtype=torch.float64, device=device)
        total, count = distributed.all_sum_(sums).tolist()
    return total / max(count, 1)


class TrainingStopped(XinslmError):
    """SIGTERM or Ctrl-C stopped a run after it saved a resume checkpoint."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention: 143 for SIGTERM, 130 for SIGINT


@contextlib.contextmanager
def stop_requests() -> Iterator[dict]:
    """Turn SIGTERM and a first Ctrl-C into a request to stop at the next step boundary (where
    a resume checkpoint can be saved); a second Ctrl-C stops at once."""
    request: dict = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield request  # signal handlers can only be set from the main thread
        return

    def handle(signum: int, frame: object) -> None:
        if request["signal"] is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        request["signal"] = signum

    previous = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _first_bad(losses: list[float], first_step: int, desc: str, kept: str) -> None:
    for i, loss in enumerate(losses):
        if not math.isfinite(loss):
            raise XinslmError(f"{desc}: loss became {loss} at step {first_step + i}{kept}")


def train_loop(
    model: NanoChatModel,
    train_batches: BlockBatches | ChatBatches,
    val_batches: Callable[[], Iterator[Batch]] | None,
    params: TrainParams,
    out_path: str | Path,
    live_dir: str | Path | None,
    checkpoint_extra: dict,
    desc: str = "train",
    resume_path: str | Path | None = None,
    data_identity: dict | None = None,
    on_eval: Callable[[int, float], None] | None = None,
) -> dict:
    """Train `model` for params.max_steps optimizer steps and save the checkpoint to out_path.

    Logs train loss, val loss, lr and tokens/s to dvclive in `live_dir` (None: no logging,
    for scripts that run without dvc; the folder is replaced whole when the run ends). With
    `resume_path`, saves a resume checkpoint there every params.checkpoint_every steps and on
    SIGTERM or Ctrl-C, continues from one that is there (if it was made by a run with the same
    model, params and `data_identity`), and removes it when the run completes. `on_eval` is
    called with (step, val loss) after each evaluation. Returns the summary (final train and
    val loss, tokens seen, seconds).

    Under torchrun (several processes), `train_batches` must be this process's slice of each
    global batch and `val_batches` the batches of all: the gradients are averaged over the
    processes, train and val loss and tokens count the global batch, and only rank 0 logs and
    writes files.
    """
    world = distributed.current()
    device = pick_device(params.device)
    if world.size > 1 and device.type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise XinslmError(
                f"{desc}: process {world.local_rank} of this machine has no GPU of its own "
                f"({torch.cuda.device_count()} visible): set nproc to at most that"
            )
        device = torch.device("cuda", world.local_rank)  # one GPU per process
    if world.size > 1 and device.type not in ("cuda", "cpu"):
        raise XinslmError(f"{desc}: nproc above 1 runs on CUDA GPUs or the CPU, not {device}")
    distributed.init(world, device)
    setup_device(device)
    model.to(device)
    optimizers = make_optimizers(model, params, device)
    settings = {k: v for k, v in asdict(params).items() if k not in FREE_PARAMS}
    identity = {"stage": desc, "model": model.config.to_dict(), "params": settings}
    identity["data"] = data_identity or {}
    identity["processes"] = world.size
    # Everything besides weights, optimizer, data position and RNG that a resumed run needs
    # to end exactly as an uninterrupted one: the loss window and what was logged so far.
    run: dict = {
        "step": 0,
        "summary": {"train_loss": None, "val_loss": None, "tokens": 0},
        "history": [],  # (step, metrics) per log line, replayed into dvclive on resume
        "window_losses": torch.zeros(params.log_every),
        "window_steps": 0,
        "window_tokens": 0,
    }
    resume = load_resume(resume_path, identity) if resume_path is not None else None
    if resume is not None:
        model.load_state_dict(resume["model"])
        for optimizer, state in zip(optimizers, resume["optimizer"], strict=True):
            optimizer.load_state_dict(state)
        train_batches.load_state_dict(resume["data"])
        set_rng_state(resume["rank_rng"][world.rank] if world.size > 1 else resume["rng"])
        run = resume["run"]
        tqdm.write(f"{desc}: resuming from {resume_path} at step {run['step']}")
    elif world.size > 1:
        torch.manual_seed(params.seed + world.rank)  # each process its own dropout masks
    ddp = distributed.data_parallel(model, device)
    step_fn = torch.compile(ddp) if use_compile(params, device) else ddp
    window_losses = run["window_losses"].to(device)
    window_start, timed_tokens = time.perf_counter(), 0
    start = time.perf_counter()

    def kept() -> str:
        if resume_path is None or not Path(resume_path).exists():
            return ""
        return (
            f"; the last good state is {resume_path} (step {run['step']}): rerun to continue "
            "from it, or delete it to start over with other params"
        )

    def save_resume_checkpoint(done: int, data_state: dict) -> None:
        # Only a good state is kept: a NaN or inf in the losses so far or in the weights
        # stops the run here and leaves the last good resume checkpoint as it was.
        losses = window_losses[: run["window_steps"]].tolist()
        _first_bad(losses, done - len(losses) + 1, desc, kept())
        finite = torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all()
        if not finite:  # one host sync for all the weights
            raise XinslmError(f"{desc}: weights became non-finite by step {done}{kept()}")
        run["step"], run["window_losses"] = done, window_losses.cpu()
        rngs = distributed.gather(rng_state())  # each process's dropout stream goes on
        if world.main:
            save_resume(
                resume_path,
                model=_weights(model),
                model_config=model.config.to_dict(),
                tokenizer=checkpoint_extra.get("tokenizer", {}),
                optimizer=[o.state_dict() for o in optimizers],
                step=done,
                data=data_state,
                rng=rngs[0],
                **({"rank_rng": rngs} if world.size > 1 else {}),
                run=run,
                identity=identity,
            )
        distributed.barrier()  # no process goes on (or stops) before the file is there

    with contextlib.ExitStack() as stack:
        # Without a place for a resume checkpoint, SIGTERM and Ctrl-C act as they always do.
        no_stop: dict = {"signal": None}
        stop = stack.enter_context(stop_requests()) if resume_path is not None else no_stop
        stack.callback(distributed.close)
        live = None
        if live_dir is not None and world.main:
            from dvclive import Live

            live_tmp = stack.enter_context(atomic_dir(live_dir))
            live = Live(str(live_tmp), dvcyaml=None, save_dvc_exp=False, report=None)
            for logged_step, metrics in run["history"]:
                _log(live, logged_step, metrics)
        bar = tqdm(
            range(run["step"], params.max_steps),
            desc=desc,
            unit="step",
            disable=None if world.main else True,
            mininterval=1.0,
            initial=run["step"],
            total=params.max_steps,
        )
        batches = train_batches
        if device.type == "cuda":
            batches = Prefetcher(train_batches, device)
            stack.callback(batches.close)
        for step in bar:
            scale = lr_scale(step, params)
            for optimizer in optimizers:
                for group in optimizer.param_groups:
                    group["lr"] = group["peak_lr"] * scale
            lr = params.lr * scale
            micro = [
                [t.to(device, non_blocking=True) for t in next(batches)]
                for _ in range(params.grad_accum)
            ]
            # The step's loss is the mean over every learned target of the global batch (all
            # micro-batches of all processes), as one big batch would give: each micro-batch
            # weighs by its share of the targets. DDP averages gradients over the processes,
            # hence the factor world.size. No host sync: the counts stay on the device.
            counts = [(y != IGNORE_INDEX).sum() for _, y in micro]
            total = distributed.all_sum_(sum(counts)).clamp(min=1)
            step_loss = torch.zeros((), device=device)
            for i, ((x, y), count) in enumerate(zip(micro, counts, strict=True)):
                if world.size > 1:  # all-reduce the gradients after the last micro-batch only
                    ddp.require_backward_grad_sync = i == len(micro) - 1
                with autocast_for(device):
                    _, loss = step_fn(x, y)
                share = loss * (count * world.size / total)
                share.backward()
                step_loss += share.detach() / world.size
                run["window_tokens"] += int(x.numel()) * world.size
                timed_tokens += int(x.numel()) * world.size
            distributed.all_sum_(step_loss)  # the global batch's loss on every process
            if params.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), params.grad_clip)
            for optimizer in optimizers:
                optimizer.step()
            model.zero_grad(set_to_none=True)
            window_losses[run["window_steps"]] = step_loss
            run["window_steps"] += 1
            done = step + 1
            if run["window_steps"] == params.log_every or done == params.max_steps:
                losses = window_losses[: run["window_steps"]].tolist()  # one host sync a window
                _first_bad(losses, done - len(losses) + 1, desc, kept())
                train_loss = sum(losses) / len(losses)
                elapsed = time.perf_counter() - window_start
                metrics = {
                    "train/loss": train_loss,
                    "lr": lr,
                    "tokens_per_sec": timed_tokens / elapsed,
                }
                run["summary"]["tokens"] += run["window_tokens"]
                run["summary"]["train_loss"] = train_loss
                bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{timed_tokens / elapsed:,.0f}")
                run["window_steps"], run["window_tokens"] = 0, 0
                window_start, timed_tokens = time.perf_counter(), 0
                if val_batches is not None and (
                    done % params.eval_every == 0 or done == params.max_steps
                ):
                    # Every process evaluates every world.size-th batch.
                    shard = itertools.islice(val_batches(), world.rank, None, world.size)
                    val_loss = evaluate(model, shard, device)
                    run["summary"]["val_loss"] = metrics["val/loss"] = val_loss
                    if on_eval is not None:
                        on_eval(done, val_loss)
                    tqdm.write(
                        f"{desc} step {done}/{params.max_steps}: train loss {train_loss:.4f}, "
                        f"val loss {val_loss:.4f}"
                    )
                run["history"].append((done, metrics))
                if live is not None:
                    _log(live, done, metrics)
            if done == params.max_steps or resume_path is None:
                continue
            stopping = stop["signal"] is not None
            if world.size > 1:
                # All processes stop at the same step. They agree at log points only (asking
                # every step would wait for the GPUs every step); torchrun passes SIGTERM to
                # them all and allows 30 s before it kills them.
                stopping = done % params.log_every == 0 and distributed.any_rank(stopping, device)
            if stopping or (params.checkpoint_every and done % params.checkpoint_every == 0):
                save_resume_checkpoint(done, batches.state_dict())
            if stopping:
                signum = stop["signal"] or signal.SIGTERM  # (another process got it)
                raise TrainingStopped(
                    f"{desc}: stopped by {signal.Signals(signum).name} at step {done}; saved "
                    f"{resume_path}: run the stage again (dvc repro) to continue from there",
                    signum,
                )
        bar.close()
        summary = {**run["summary"], "steps": params.max_steps}
        # No timings in the checkpoint: the same inputs give the same bytes, so DVC can see
        # that a rerun changed nothing and skip the stages after it.
        if world.main:
            save_checkpoint(
                out_path,
                model=_weights(model),
                model_config=model.config.to_dict(),
                optimizer=[o.state_dict() for o in optimizers],
                step=params.max_steps,
                train_params=asdict(params),
                summary=summary,
                **checkpoint_extra,
            )
        distributed.barrier()
        summary["seconds"] = round(time.perf_counter() - start, 2)
        if live is not None:
            live.summary.update(seconds=summary["seconds"], tokens=summary["tokens"])
            live.end()
    if resume_path is not None and world.main:
        Path(resume_path).unlink(missing_ok=True)  # the run is complete
    return summary


def _weights(model: NanoChatModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _log(live, step: int, metrics: dict) -> None:
    live.step = step  # dvclive's x axis: optimizer steps done
    for name, value in metrics.items():
        live.log_metric(name, value)
    live.next_step()
