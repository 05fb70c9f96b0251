"""One training loop for both stages: AdamW, warmup then cosine decay, gradient accumulation,
clipping, periodic val loss, mixed precision and compile on GPU, metrics through dvclive."""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from xinslm.checkpoint import save_checkpoint
from xinslm.config import TrainParams
from xinslm.data import Batch
from xinslm.errors import XinslmError
from xinslm.model import NanoChatModel


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


def lr_at(step: int, params: TrainParams) -> float:
    """Linear warmup to params.lr, then cosine decay to params.lr * min_lr_frac."""
    if step < params.warmup_steps:
        return params.lr * (step + 1) / params.warmup_steps
    span = max(1, params.max_steps - params.warmup_steps)
    progress = min(1.0, (step - params.warmup_steps) / span)
    scale = params.min_lr_frac + (1 - params.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress))
    return params.lr * scale


def make_optimizer(model: NanoChatModel, params: TrainParams, device: torch.device):
    """AdamW; weight decay on the matrices only (not on norms or scalars, which have none here)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": params.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return torch.optim.AdamW(
        groups, lr=params.lr, betas=(params.beta1, params.beta2), fused=device.type == "cuda"
    )


def autocast_for(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Iterator[Batch], device: torch.device) -> float:
    """Mean loss per learned target over the given batches."""
    model.eval()
    total, count = 0.0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with autocast_for(device):
            _, loss = model(x, y)
        n = int((y != -100).sum())
        total, count = total + float(loss) * n, count + n
    model.train()
    return total / max(count, 1)


def train_loop(
    model: NanoChatModel,
    train_batches: Iterator[Batch],
    val_batches: Callable[[], Iterator[Batch]] | None,
    params: TrainParams,
    out_path: str | Path,
    live_dir: str | Path | None,
    checkpoint_extra: dict,
    desc: str = "train",
) -> dict:
    """Train `model` for params.max_steps optimizer steps and save the checkpoint to out_path.

    Logs train loss, val loss, lr and tokens/s to dvclive in `live_dir` (None: no logging,
    for scripts that run without dvc); returns the summary (final train and val loss, tokens
    seen, seconds).
    """
    device = pick_device(params.device)
    model.to(device)
    optimizer = make_optimizer(model, params, device)
    step_fn = torch.compile(model) if params.compile else model
    live = None
    if live_dir is not None:
        from dvclive import Live

        live = Live(str(live_dir), dvcyaml=None, save_dvc_exp=False, report=None)
    summary: dict = {"train_loss": None, "val_loss": None, "tokens": 0}
    window_loss = torch.zeros((), device=device)
    window_steps, window_tokens, window_start = 0, 0, time.perf_counter()
    start = time.perf_counter()
    bar = tqdm(range(params.max_steps), desc=desc, unit="step", disable=None, mininterval=1.0)
    for step in bar:
        lr = lr_at(step, params)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for _ in range(params.grad_accum):
            x, y = next(train_batches)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast_for(device):
                _, loss = step_fn(x, y)
            (loss / params.grad_accum).backward()
            window_loss += loss.detach() / params.grad_accum
            window_tokens += int(x.numel())
        if params.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), params.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        window_steps += 1
        last = step == params.max_steps - 1
        if window_steps == params.log_every or last:
            train_loss = float(window_loss) / window_steps  # the one host sync per window
            if not math.isfinite(train_loss):
                raise XinslmError(f"{desc}: loss became {train_loss} at step {step + 1}")
            elapsed = time.perf_counter() - window_start
            summary["tokens"] += window_tokens
            metrics = {
                "train/loss": train_loss,
                "lr": lr,
                "tokens_per_sec": window_tokens / elapsed,
            }
            summary["train_loss"] = train_loss
            bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{window_tokens / elapsed:,.0f}")
            window_loss.zero_()
            window_steps, window_tokens, window_start = 0, 0, time.perf_counter()
            if val_batches is not None and ((step + 1) % params.eval_every == 0 or last):
                summary["val_loss"] = metrics["val/loss"] = evaluate(model, val_batches(), device)
                tqdm.write(
                    f"{desc} step {step + 1}/{params.max_steps}: train loss {train_loss:.4f}, "
                    f"val loss {summary['val_loss']:.4f}"
                )
            if live is not None:
                live.step = step + 1  # dvclive's x axis: optimizer steps done
                for name, value in metrics.items():
                    live.log_metric(name, value)
                live.next_step()
    bar.close()
    summary["steps"] = params.max_steps
    # No timings in the checkpoint: the same inputs give the same bytes, so DVC can see that a
    # rerun changed nothing and skip the stages after it.
    save_checkpoint(
        out_path,
        model={k: v.detach().cpu() for k, v in model.state_dict().items()},
        model_config=model.config.to_dict(),
        optimizer=optimizer.state_dict(),
        step=params.max_steps,
        train_params=asdict(params),
        summary=summary,
        **checkpoint_extra,
    )
    summary["seconds"] = round(time.perf_counter() - start, 2)
    if live is not None:
        live.summary.update(seconds=summary["seconds"], tokens=summary["tokens"])
        live.end()
    return summary
