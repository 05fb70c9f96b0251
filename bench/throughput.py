"""Training throughput and MFU of xinslm's model on one or several GPUs (or the CPU).

    python bench/throughput.py [--depth 12 20] [--batch 16] [--ctx 2048] [--vocab 32768 65536]
                               [--optimizer adamw muon] [--compile true] [--steps 30]
                               [--compile-mode max-autotune-no-cudagraphs]
                               [--nproc 2] [--fp8] [--profile FILE]

Each depth is a nanochat-shaped model: n_embd = 64 * depth, heads of 128 channels (as many
kv heads as heads), ReLU^2 MLP, untied head. One step is forward + backward + optimizer step
on random tokens already on the device, in bf16 autocast with the model compiled, as
xinslm's train_loop runs it. The median of --steps steps after --warmup steps is reported.
With --nproc N, the script relaunches itself through torchrun as N processes, one GPU each,
with the model in DistributedDataParallel as train_loop wraps it; --batch is per GPU, tokens/s
counts all GPUs and MFU is per GPU.
MFU counts xinslm.flops.flops_per_token (the FLOPs the training logs use): 6 per parameter per
token for the matrices (embedding lookups excluded) plus attention, 12 * n_layer * n_embd *
ctx per token (the score and value matmuls, forward and backward, as nanochat and PaLM count
them), over a peak of 989 TFLOP/s bf16 (H100/H200 SXM, dense). Needs only torch (and numpy,
pyyaml for the library's imports): no dvc.
--fp8 trains the blocks' linear layers and the head in float8 through torchao (optional);
--profile FILE writes the CUDA kernels of three steps of the first configuration, by time.
Levers measured here only (issue 17), not the product's path: --ns-steps N runs Muon's
Newton-Schulz N times instead of 5; --liger computes the head and its cross-entropy with
liger-kernel's fused linear cross-entropy (chunks of the logits, softcap inside; optional
package), the rest of the model compiled as usual.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from step_params import step_params  # noqa: E402 (bench/, beside this script)

from xinslm import distributed  # noqa: E402
from xinslm.device import setup_device  # noqa: E402
from xinslm.flops import flops_per_token  # noqa: E402
from xinslm.fp8 import to_float8  # noqa: E402
from xinslm.model import ModelConfig, NanoChatModel  # noqa: E402
from xinslm.step import TrainStep  # noqa: E402

PEAK_FLOPS = {"cuda": 989e12}  # bf16 dense, H100/H200 SXM


def measure(args: argparse.Namespace, depth: int, vocab: int, optimizer: str) -> dict:
    world = distributed.current()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = distributed.init(world, device, "throughput")
    setup_device(device)
    heads = max(1, 64 * depth // 128)
    config = ModelConfig(
        context_len=args.ctx,
        n_layer=depth,
        n_head=heads,
        n_kv_head=heads,
        n_embd=64 * depth,
        vocab_size=vocab,
    )
    torch.manual_seed(0)
    model = NanoChatModel(config).to(device)
    if args.fp8:
        to_float8(model, args.fp8_recipe)
    if args.liger:
        use_liger_loss(model)
    params = step_params(optimizer, 1e-3, args.compile)
    train_step = TrainStep(model, params, device, args.compile_mode)
    for opt in train_step.optimizers:
        for group in opt.param_groups:
            if "ns_steps" in group:
                group["ns_steps"] = args.ns_steps
    x = torch.randint(0, vocab, (args.batch, args.ctx), device=device)
    y = torch.randint(0, vocab, (args.batch, args.ctx), device=device)

    def step() -> None:
        train_step([(x, y)], 10**5)  # past warmup: the lr is set, not read from the device

    start = time.perf_counter()
    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    warmup_s = time.perf_counter() - start
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if args.profile and not args.profiled:
        write_profile(step, args.profile)
        args.profiled = True
    seconds = statistics.median(times)
    tokens = world.size * args.batch * args.ctx / seconds
    peak = PEAK_FLOPS.get(device.type)
    if peak:
        peak *= world.size
    return {
        "params": model.num_params(),
        "seconds": seconds,
        "tokens_per_sec": tokens,
        "mfu": flops_per_token(config) * tokens / peak if peak else None,
        "warmup_s": warmup_s,
        "memory_gb": torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None,
    }


def use_liger_loss(model: NanoChatModel) -> None:
    """Replace the model's head + softcap + cross-entropy with liger-kernel's fused linear
    cross-entropy, outside the compiled graph (its Triton kernels run eagerly)."""
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    fused = LigerFusedLinearCrossEntropyLoss(softcap=model.config.logit_softcap)
    fused_loss = torch.compiler.disable(fused)
    plain = model.forward

    def forward(input_ids, targets=None, cache=None):
        if targets is None:
            return plain(input_ids, targets, cache)
        h = model.hidden_states(input_ids)
        return None, fused_loss(model.lm_head.weight, h.view(-1, h.size(-1)), targets.view(-1))

    model.forward = forward


def write_profile(step, path: str) -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    table = prof.key_averages().table(
        sort_by="cuda_time_total", row_limit=40, max_name_column_width=90
    )
    Path(path).write_text(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, nargs="+", default=[12, 20])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--ctx", type=int, default=2048)
    # 32,768 is nanochat's vocabulary (the ANCHORS.md figures); 65,536 weighs the head more.
    parser.add_argument("--vocab", type=int, nargs="+", default=[32768])
    parser.add_argument("--optimizer", nargs="+", default=["adamw", "muon"])
    parser.add_argument("--compile", type=lambda s: s.lower() == "true", default=True)
    parser.add_argument(
        "--compile-mode",
        default=None,
        help="torch.compile mode, e.g. max-autotune-no-cudagraphs (train_loop: the default)",
    )
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--nproc", type=int, default=1, help="GPUs, through torchrun")
    parser.add_argument("--fp8", action="store_true", help="float8 linear layers (torchao)")
    parser.add_argument("--fp8-recipe", default="tensorwise", help="tensorwise or rowwise")
    parser.add_argument("--profile", help="write the kernels of 3 steps to this file")
    parser.add_argument("--ns-steps", type=int, default=5, help="Muon's Newton-Schulz steps")
    parser.add_argument("--liger", action="store_true", help="liger-kernel's fused head + loss")
    args = parser.parse_args()
    args.profiled = False
    world = distributed.launch(args.nproc, "throughput")  # only rank 0 prints from here on
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"device: {world.size} x {name}, torch {torch.__version__}, ", end="")
    print(f"batch {args.batch} x ctx {args.ctx} per process,")
    mode = f" ({args.compile_mode})" if args.compile and args.compile_mode else ""
    levers = f", Newton-Schulz x{args.ns_steps}" + (", liger loss" if args.liger else "")
    print(f"compile {args.compile}{mode}, median of {args.steps} steps{levers}")
    print(
        f"{'gpus':>4} {'depth':>5} {'vocab':>6} {'optimizer':>9} {'params':>8} {'ms/step':>8} "
        f"{'tokens/s':>10} {'MFU':>6} {'warmup s':>9} {'mem GB':>7}"
    )
    for depth, vocab, optimizer in itertools.product(args.depth, args.vocab, args.optimizer):
        r = measure(args, depth, vocab, optimizer)
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        mem = f"{r['memory_gb']:.1f}" if r["memory_gb"] is not None else "-"
        print(
            f"{world.size:>4} {depth:>5} {vocab:>6} {optimizer:>9} {r['params'] / 1e6:>7.0f}M "
            f"{1000 * r['seconds']:>8.1f} {r['tokens_per_sec']:>10,.0f} {mfu:>6} "
            f"{r['warmup_s']:>9.1f} {mem:>7}",
            flush=True,
        )
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()


if __name__ == "__main__":
    try:
        main()
    finally:
        distributed.close()
