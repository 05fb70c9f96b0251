"""A depth miniseries without DVC: val bpb against training FLOPs for models of several depths.

    python bench/miniseries.py [--depth 2 4 6 8] [--ctx 512] [--batch 32] [--max-steps 500]
                               [--tokens-per-param 0] [--text DIR_OR_FILE] [--compile false]

What `dvc exp run --queue pretrain -S 'model.depth=...'` does (README: Scaling), for a machine
without dvc such as the lent GPUs: each depth sizes the model through model.depth (64 wide per
layer, heads of 128, the AdamW lr scaled for the width as the pretrain stage does), and trains
with Muon (--optimizer adamw: AdamW alone) on the byte tokens of --text (default:
tinyshakespeare.txt from $XINSLM_SHARED_DATA, default ../shared/data), 90/10 split, through
the library's tokenize_text, pack_blocks and train_loop. Steps: --max-steps, or with
--tokens-per-param R the pretrain stage's horizon. Prints one row per depth (params, FLOPs per
token, steps, tokens, FLOPs, val bpb at each evaluation's end, seconds)
and the val bpb curve against FLOPs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("XINSLM_SHARED_DATA", ROOT.parent / "shared" / "data"))

from xinslm.artifact import read_meta  # noqa: E402
from xinslm.batches import BlockBatches, val_block_batches  # noqa: E402
from xinslm.blocks import open_blocks  # noqa: E402
from xinslm.config import ModelParams, PretrainParams, load_params  # noqa: E402
from xinslm.device import seed_everything  # noqa: E402
from xinslm.flops import flops_per_token, horizon_steps, scaling_params  # noqa: E402
from xinslm.losses import read_token_bytes  # noqa: E402
from xinslm.model import ModelConfig, NanoChatModel  # noqa: E402
from xinslm.optim import width_lr_scale  # noqa: E402
from xinslm.pack import pack_blocks  # noqa: E402
from xinslm.tokenize_text import tokenize_text  # noqa: E402
from xinslm.tokenizer import ByteTokenizer  # noqa: E402
from xinslm.train import TrainJob, train_loop  # noqa: E402
from xinslm.train_log import ConsoleLog  # noqa: E402


class CurveLog(ConsoleLog):
    """The console, and (FLOPs, val bpb) at each evaluation."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.curve: list[tuple[float, float]] = []

    def metrics(self, step: int, metrics: dict) -> None:
        super().metrics(step, metrics)
        if "val/bpb" in metrics:
            self.curve.append((metrics["flops"], metrics["val/bpb"]))


def run(args: argparse.Namespace, depth: int, work: Path) -> dict:
    meta = read_meta(work / "blocks", "blocks")
    train, val = (open_blocks(work / "blocks", meta, s) for s in ("train", "val"))
    shape = ModelParams(
        depth=depth, context_len=args.ctx, n_layer=1, n_head=1, n_kv_head=1, n_embd=2,
        logit_softcap=15.0, dropout=0.0,
    ).shape()  # fmt: skip
    config = ModelConfig(vocab_size=meta["tokenizer"]["vocab_size"], **shape)
    steps = args.max_steps or horizon_steps(config, args.tokens_per_param, args.batch * args.ctx)
    params = PretrainParams(
        max_steps=steps, batch_size=args.batch, grad_accum=1, optimizer=args.optimizer,
        lr=args.lr * width_lr_scale(config.n_embd), muon_lr=args.muon_lr,
        muon_momentum=0.95, min_lr_frac=0.1, warmup_steps=max(1, steps // 20),
        weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=1.0, log_every=max(1, steps // 10),
        eval_every=max(1, steps // 10), eval_batches=20, checkpoint_every=0, seed=1337,
        device=args.device, compile=args.compile, nproc=1, fp8=False, shift_blocks=True,
        tokens_per_param=args.tokens_per_param,
    )  # fmt: skip
    seed_everything(params.seed)
    model = NanoChatModel(config)
    job = TrainJob(
        name=f"d{depth}", params=params, out_path=work / f"d{depth}.pt", live_dir=None,
        resume_path=None, data={}, checkpoint_extra={}, token_bytes=read_token_bytes(
            work / "blocks", meta),
    )  # fmt: skip
    log = CurveLog(f"d{depth}")
    start = time.perf_counter()
    summary = train_loop(
        model,
        BlockBatches(train, params.batch_size, params.seed, params.shift_blocks),
        lambda: val_block_batches(val, params.batch_size, params.eval_batches),
        job,
        log,
    )
    return {
        "depth": depth, "width": config.n_embd, "params": scaling_params(config),
        "flops_per_token": flops_per_token(config), "steps": steps, "tokens": summary["tokens"],
        "flops": log.curve[-1][0], "bpb": log.curve[-1][1], "curve": log.curve,
        "seconds": time.perf_counter() - start,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, nargs="+", default=[2, 4, 6, 8])
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-steps", type=int, default=500)
    parser.add_argument("--tokens-per-param", type=float, default=0.0)
    parser.add_argument("--lr", type=float, default=3e-3, help="AdamW's lr at 768 wide")
    parser.add_argument("--optimizer", default="muon", choices=["muon", "adamw"])
    parser.add_argument("--muon-lr", type=float, default=0.02)
    parser.add_argument("--text", type=Path, default=SHARED / "tinyshakespeare.txt")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", default=False, type=lambda s: s.lower() == "true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="xinslm-miniseries-"))
    (text,) = load_params(ROOT / "params.yaml", "text")
    text = dataclasses.replace(text, input=str(args.text), val_fraction=0.1)
    tokenize_text(text, ByteTokenizer(), work / "tokens", work / "token-store")
    pack_blocks(work / "tokens", work / "blocks", args.ctx)
    rows = [run(args, depth, work) for depth in args.depth]
    opt = f"Muon (lr {args.muon_lr:g})" if args.optimizer == "muon" else "AdamW only"
    print(f"\ntext {args.text.name}, ctx {args.ctx}, batch {args.batch}, {opt}, lr {args.lr:g}")
    print(
        f"{'depth':>5} {'width':>5} {'params':>8} {'FLOPs/tok':>10} {'steps':>6} "
        f"{'tokens':>11} {'FLOPs':>9} {'val bpb':>8} {'seconds':>8}"
    )
    for r in rows:
        print(
            f"{r['depth']:>5} {r['width']:>5} {r['params'] / 1e6:>7.2f}M "
            f"{r['flops_per_token']:>10.3e} {r['steps']:>6} {r['tokens']:>11,} "
            f"{r['flops']:>9.2e} {r['bpb']:>8.4f} {r['seconds']:>8.1f}"
        )
    print("\nval bpb against FLOPs (each evaluation):")
    for r in rows:
        points = ", ".join(f"{f:.2e}: {b:.3f}" for f, b in r["curve"])
        print(f"d{r['depth']}: {points}")


if __name__ == "__main__":
    main()
