"""The training loop of both stages, read top to bottom: set up, resume or start, then every
step train, log, evaluate and guard; at the end save the checkpoint.

Its parts live beside it: TrainStep (xinslm.step) is one optimizer step, TrainState
(xinslm.train_state) what the loop carries and a resume checkpoint saves, Guard
(xinslm.resume) the resume checkpoints, stop requests and NaN guard, TrainLog
(xinslm.train_log) the progress bar and the dvclive curves.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from xinslm import distributed
from xinslm.batches import Batch, BlockBatches, ChatBatches, MixedBatches, Prefetcher
from xinslm.checkpoint import save_checkpoint
from xinslm.config import TrainParams
from xinslm.device import pick_device, setup_device
from xinslm.flops import flops_per_token
from xinslm.losses import bits_per_byte, loss_sums, text_sums
from xinslm.model import NanoChatModel
from xinslm.optim import lr_scale
from xinslm.resume import Guard
from xinslm.step import TrainStep
from xinslm.train_log import TrainLog, open_log
from xinslm.train_state import TrainState, weights


@dataclass
class TrainJob:
    """What a stage asks of the loop."""

    name: str  # pretrain or sft: names the run in messages, logs and resume checkpoints
    params: TrainParams
    out_path: str | Path  # the checkpoint written when the run is complete
    live_dir: str | Path | None  # dvclive's folder (None: no dvclive)
    resume_path: str | Path | None  # resume checkpoints (None: none)
    data: dict  # what the data is: a resume checkpoint of other data is not used
    checkpoint_extra: dict  # more for the checkpoint: tokenizer, stage, ...
    token_bytes: torch.Tensor | None = None  # each id's UTF-8 bytes: val bpb is logged too


def train_loop(
    model: NanoChatModel,
    batches: BlockBatches | ChatBatches | MixedBatches,
    val_batches: Callable[[], Iterator[Batch]] | None,
    job: TrainJob,
    log: TrainLog | None = None,
) -> dict:
    """Train `model` for job.params.max_steps steps, save job.out_path and return the summary
    (final train and val loss, tokens, steps, seconds). `val_batches()` gives the val batches
    of one evaluation (None: no val loss); `log` replaces the stage's console and dvclive.
    Every log point carries `flops`, the training FLOPs so far (xinslm.flops, all processes),
    and from the second on `tokens_per_sec` (xinslm.train_log).

    Under torchrun, `batches` is this process's slice of each global batch and `val_batches`
    the batches of all: the gradients are averaged over the processes, losses and tokens count
    the global batch, and only rank 0 logs and writes files."""
    p, world = job.params, distributed.current()
    device = distributed.init(world, pick_device(p.device), job.name)
    setup_device(device)
    train_step = TrainStep(model.to(device), p, device)
    token_flops = flops_per_token(model.config)
    log = log or open_log(job.name, job.live_dir, world.main)
    with contextlib.ExitStack() as stack:
        stack.callback(distributed.close)
        if device.type == "cuda":  # the next batch made while a step runs
            batches = stack.enter_context(Prefetcher(batches, device))
        state = TrainState(model, train_step.optimizers, batches, p.log_every)
        stack.callback(log.close)
        guard = stack.enter_context(Guard(job, model.config.to_dict()))
        guard.resume(state)
        log.start(state, p.max_steps)
        start = window_start = time.perf_counter()
        window_tokens, steady = 0, False  # the first window holds compilation and warm-up
        for step in range(state.step, p.max_steps):
            # -- one optimizer step (no host sync)
            loss, tokens = train_step([next(batches) for _ in range(p.grad_accum)], step)
            state.record(loss, tokens)
            window_tokens += tokens
            log.step()
            # -- at a log point: the window's train loss (one host sync), val loss when due
            if state.window_steps == p.log_every or state.step == p.max_steps:
                metrics = {
                    "train/loss": state.close_window(),
                    "lr": p.lr * lr_scale(step, p),
                    "flops": token_flops * state.tokens,
                }
                if steady:  # tokens/s of training alone: evaluations and saves are not timed
                    metrics["tokens_per_sec"] = window_tokens / (time.perf_counter() - window_start)
                if val_batches and (state.step % p.eval_every == 0 or state.step == p.max_steps):
                    metrics.update(evaluate(model, val_batches(), device, job.token_bytes))
                    # DVC joins a plot's x and y files row by row: the tokens and FLOPs of each
                    # evaluation get curves of their own beside val/loss's (dvc.yaml's plots).
                    metrics["val/tokens"], metrics["val/flops"] = state.tokens, metrics["flops"]
                state.log(metrics)
                log.metrics(state.step, metrics)
                window_start, window_tokens, steady = time.perf_counter(), 0, True
            # -- a resume checkpoint when due; stop when asked to
            if guard.after_step(state):  # saved: the window's timing starts again after it
                window_start, window_tokens = time.perf_counter(), 0
        # -- the run is complete: the checkpoint
        summary = {**state.summary(), "steps": p.max_steps}
        if world.main:
            save_final_checkpoint(job, state, summary)
        distributed.barrier()
        summary["seconds"] = round(time.perf_counter() - start, 2)
        log.end(summary)
        guard.finish()
    return summary


def evaluate(
    model: NanoChatModel,
    batches: Iterator[Batch],
    device: torch.device,
    token_bytes: torch.Tensor | None = None,
) -> dict:
    """val/loss, the mean loss per learned target over `batches`, and with `token_bytes`
    val/bpb, bits per byte as the evaluate stage computes them (xinslm.losses.text_sums). With
    several processes, each takes every n-th batch and the sums are added up."""
    world = distributed.current()
    shard = itertools.islice(batches, world.rank, None, world.size)
    if token_bytes is None:
        sums = loss_sums(model, shard, device)
    else:
        sums = text_sums(model, shard, token_bytes, device)
    sums = distributed.all_sum_(torch.tensor(sums, dtype=torch.float64, device=device)).tolist()
    metrics = {"val/loss": sums[0] / max(sums[1], 1)}
    if token_bytes is not None:
        metrics["val/bpb"] = bits_per_byte(sums[2], int(sums[3]))
    return metrics


def save_final_checkpoint(job: TrainJob, state: TrainState, summary: dict) -> None:
    # No timings in the checkpoint: the same inputs give the same bytes, so DVC can see
    # that a rerun changed nothing and skip the stages after it.
    save_checkpoint(
        job.out_path,
        model=weights(state.model),
        model_config=state.model.config.to_dict(),
        optimizer=[o.state_dict() for o in state.optimizers],
        step=job.params.max_steps,
        train_params=asdict(job.params),
        summary=summary,
        **job.checkpoint_extra,
    )
