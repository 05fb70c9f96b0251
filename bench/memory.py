"""xinslm.memory's estimate of a training step's peak memory against the measured peak.

    python bench/memory.py            # CPU, float32: each config in a process of its own
    python bench/memory.py --cuda     # one GPU, bf16 autocast: eager, then compiled

CPU: the peak RSS of two training steps on random tokens, less the RSS before the model was
built, measured twice: with glibc's default malloc (what the machine must have), and with a
fixed mmap threshold (MALLOC_MMAP_THRESHOLD_=131072: each large tensor is its own mapping,
returned when freed, so the RSS follows the bytes torch holds). CUDA: torch's own peak
(max_memory_allocated) over three steps. Needs torch only (plus the library's imports).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from step_params import step_params  # noqa: E402 (bench/, beside this script)

from xinslm.memory import GIB, estimate_training  # noqa: E402
from xinslm.model import ModelConfig, NanoChatModel  # noqa: E402
from xinslm.step import TrainStep  # noqa: E402

# (n_layer, n_embd, n_head, n_kv_head, context_len, batch, vocab, optimizer)
CPU_CONFIGS = [
    (4, 128, 4, 2, 256, 16, 265, "adamw"),  # params.yaml's model and batch
    (4, 512, 8, 4, 512, 8, 4105, "adamw"),
    (2, 256, 4, 4, 256, 8, 50266, "adamw"),  # the logits dominate
    (6, 384, 6, 6, 1024, 8, 265, "muon"),  # the activations dominate
    (8, 1024, 8, 8, 64, 2, 4105, "adamw"),  # the weights and optimizer state dominate
    (8, 1024, 8, 8, 64, 2, 4105, "muon"),  # ... and Muon's step
]
CUDA_CONFIGS = [
    (12, 768, 6, 6, 2048, 8, 32768, "muon"),  # d12
    (12, 768, 6, 6, 2048, 16, 65536, "adamw"),
    (20, 1280, 10, 10, 2048, 8, 65536, "muon"),  # d20
    (4, 2048, 16, 4, 1024, 4, 50266, "adamw"),  # wide and shallow, GQA
]


def config_of(c: tuple) -> ModelConfig:
    n_layer, n_embd, n_head, n_kv_head, ctx, _, vocab, _ = c
    return ModelConfig(
        context_len=ctx, n_layer=n_layer, n_head=n_head, n_kv_head=n_kv_head, n_embd=n_embd,
        vocab_size=vocab,
    )  # fmt: skip


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def steps(c: tuple, device: torch.device, compiled: bool, n: int) -> None:
    """n training steps of config c on random tokens, through the training loop's TrainStep."""
    *_, ctx, batch, vocab, optimizer = c
    torch.manual_seed(0)
    model = NanoChatModel(config_of(c)).to(device)
    step = TrainStep(model, step_params(optimizer, 1e-3, compiled), device)
    x, y = (torch.randint(0, vocab, (batch, ctx), device=device) for _ in range(2))
    for i in range(n):
        step([(x, y)], i)


def measure_cpu_here(c: tuple) -> int:
    """The peak RSS increase of two steps, in this process (the kernels warmed up first on a
    tiny model, so their one-time allocations are not counted)."""
    steps((1, 16, 1, 1, 8, 1, c[6], c[7]), torch.device("cpu"), False, 1)
    before = rss()
    steps(c, torch.device("cpu"), False, 2)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before


def measure_cpu(c: tuple, fixed_mmap: bool) -> int:
    env = {**os.environ, **({"MALLOC_MMAP_THRESHOLD_": "131072"} if fixed_mmap else {})}
    out = subprocess.run(
        [sys.executable, __file__, "--one", json.dumps(c)],
        env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return int(out)


def measure_cuda(c: tuple, compiled: bool) -> int:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    steps(c, torch.device("cuda"), compiled, 3)
    return torch.cuda.max_memory_allocated()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cuda", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child process: one CPU config
    args = parser.parse_args()
    if args.one:
        print(measure_cpu_here(tuple(json.loads(args.one))))
        return
    cuda = args.cuda
    modes = ("eager", "compiled") if cuda else ("default malloc", "fixed mmap")
    print(f"torch {torch.__version__}, {'CUDA ' + torch.cuda.get_device_name() if cuda else 'CPU'}")
    print("GiB: the estimate, then measured (measured / estimate), for " + " and ".join(modes))
    for c in CUDA_CONFIGS if cuda else CPU_CONFIGS:
        name = f"{c[0]} x {c[1]}, {c[2]}/{c[3]} heads, {c[4]} x {c[5]}, vocab {c[6]}, {c[7]}"
        cells = []
        for mode in modes:
            compiled = mode == "compiled"
            e = estimate_training(config_of(c), c[5], c[4], c[7], cuda, compiled).peak()
            m = measure_cuda(c, compiled) if cuda else measure_cpu(c, mode == "fixed mmap")
            cells.append(f"{e / GIB:6.2f} {m / GIB:6.2f} ({m / e:.2f})")
        print(f"{name:<52} " + "   ".join(cells), flush=True)


if __name__ == "__main__":
    main()
