"""Do the fast paths train the same model? Loss per step, plain against fast, same batches.

    python bench/fast_paths.py [--depth 6] [--ctx 512] [--batch 16] [--steps 50] [--fp8]

From one initialization and the same batches of Shakespeare's bytes (tinyshakespeare.txt from
$XINSLM_SHARED_DATA, default ../shared/data), a model trains --steps steps with Muon through
xinslm's TrainStep three ways: the plain path (eager model, Muon's update one eager kernel at
a time), the fast path (compiled model, each shape's Muon update one compiled graph: the
training loop's path on a GPU) and, with --fp8 (needs torchao), the fast path with float8
linear layers. It prints the loss of each at some steps and the largest relative difference
from the plain path over all steps; bf16 autocast on a GPU, float32 on the CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
SHARED = Path(os.environ.get("XINSLM_SHARED_DATA", ROOT.parent / "shared" / "data"))

from step_params import step_params  # noqa: E402

from xinslm.device import setup_device  # noqa: E402
from xinslm.fp8 import to_float8  # noqa: E402
from xinslm.model import ModelConfig, NanoChatModel  # noqa: E402
from xinslm.step import TrainStep  # noqa: E402


def batches(args: argparse.Namespace) -> list[tuple[torch.Tensor, torch.Tensor]]:
    text = np.frombuffer((SHARED / "tinyshakespeare.txt").read_bytes(), dtype=np.uint8)
    data = torch.from_numpy(text.astype(np.int64))
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(args.steps):
        starts = torch.randint(0, len(data) - args.ctx - 1, (args.batch,), generator=g)
        block = torch.stack([data[s : s + args.ctx + 1] for s in starts.tolist()])
        out.append((block[:, :-1], block[:, 1:]))
    return out


def train(args: argparse.Namespace, compile: bool, fp8: bool) -> list[float]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    setup_device(device)
    heads = max(1, 64 * args.depth // 128)
    config = ModelConfig(
        context_len=args.ctx, n_layer=args.depth, n_head=heads, n_kv_head=heads,
        n_embd=64 * args.depth, vocab_size=256,
    )  # fmt: skip
    torch.manual_seed(0)
    model = NanoChatModel(config).to(device)
    if fp8:
        to_float8(model, "tensorwise")
    params = step_params("muon", 3e-3, compile)
    step = TrainStep(model, params, device)
    return [step([b], i)[0].item() for i, b in enumerate(batches(args))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--fp8", action="store_true")
    args = parser.parse_args()
    runs = {"plain": train(args, False, False), "fast": train(args, True, False)}
    if args.fp8:
        runs["fast + fp8"] = train(args, True, True)
    shown = [s for s in (0, 4, 9, 19, 49, 99, 199) if s < args.steps] + [args.steps - 1]
    print(f"depth {args.depth}, ctx {args.ctx}, batch {args.batch}, Muon, {args.steps} steps")
    print(f"{'path':>11} " + " ".join(f"{'step ' + str(s + 1):>10}" for s in sorted(set(shown))))
    plain = runs["plain"]
    for name, losses in runs.items():
        row = " ".join(f"{losses[s]:>10.4f}" for s in sorted(set(shown)))
        worst = max(abs(a - b) / b for a, b in zip(losses, plain, strict=True))
        print(f"{name:>11} {row}   max |diff| / plain: {100 * worst:.2f}%")


if __name__ == "__main__":
    main()
