"""Tokens/s of small models on the CPU, float32: forward + backward + optimizer step.

    python bench/cpu_step.py [--steps 40] [--threads N]

Two sizes: xinslm's default model (params.yaml: 4 layers, 128 wide, 4 heads over 2 kv heads,
context 256, batch 16) and nanoGPT's CPU recipe (4 layers, 4 heads, 128 wide, context 64,
batch 12), each with AdamW and with Muon, on random tokens of the byte vocabulary (261). The
median step of --steps after 5 warm-up steps. Needs torch only (plus the library's imports).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from step_params import step_params  # noqa: E402 (bench/, beside this script)

from xinslm.model import ModelConfig, NanoChatModel  # noqa: E402
from xinslm.step import TrainStep  # noqa: E402

SIZES = {
    "xinslm default": ({"n_layer": 4, "n_head": 4, "n_kv_head": 2, "n_embd": 128}, 256, 16),
    "nanoGPT cpu": ({"n_layer": 4, "n_head": 4, "n_kv_head": 4, "n_embd": 128}, 64, 12),
}


def median_step(shape: dict, ctx: int, batch: int, optimizer: str, steps: int) -> float:
    torch.manual_seed(0)
    model = NanoChatModel(ModelConfig(context_len=ctx, vocab_size=261, **shape))
    step = TrainStep(model, step_params(optimizer, 3e-3, compile=False), torch.device("cpu"))
    x = torch.randint(0, 261, (batch, ctx))
    y = torch.randint(0, 261, (batch, ctx))
    times = []
    for i in range(steps + 5):
        t0 = time.perf_counter()
        step([(x, y)], i)
        if i >= 5:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, float32")
    print(f"{'model':<15} {'ctx x batch':>11} {'optimizer':>9} {'ms/step':>8} {'tokens/s':>9}")
    for name, (shape, ctx, batch) in SIZES.items():
        for optimizer in ("adamw", "muon"):
            seconds = median_step(shape, ctx, batch, optimizer, args.steps)
            print(
                f"{name:<15} {f'{ctx} x {batch}':>11} {optimizer:>9} {1000 * seconds:>8.1f} "
                f"{ctx * batch / seconds:>9,.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
