"""Time to a val loss: nanoGPT's shakespeare-char runs, through xinslm's own pipeline code.

    python bench/shakespeare.py [--optimizer muon] [--max-steps 2000] [--compile auto]
    python bench/shakespeare.py --cpu

GPU (default): nanoGPT's config/train_shakespeare_char.py sizes: 6 layers, 6 heads, 384
wide, context 256, batch 64 (16,384 tokens a step), dropout 0.2. --cpu: nanoGPT's CPU recipe
sizes: 4 layers, 4 heads, 128 wide, context 64, batch 12, no dropout. The text is
tinyshakespeare.txt (from $XINSLM_SHARED_DATA, default ../shared/data): pure ASCII, so the
byte tokenizer is character level as nanoGPT's is; the first 90% trains, the rest (from the
next line start) is val, as tokenize-text splits it. Tokenizing, packing and training run
through xinslm's tokenize_text, pack_blocks and train_loop; every training setting is set
here (not read from params.yaml), so the figures do not move when its defaults do. Val loss
is measured every --eval-every steps (on all of val; with --cpu on 20 batches, as nanoGPT's
CPU recipe, and on all of val at the end) and printed against wall seconds since this
process started. Reports the time
to the target val loss (1.47 on GPU, 1.886 on CPU: nanoGPT's figures) and the best val
loss. Needs torch, numpy and pyyaml only: no dvc.
"""

from __future__ import annotations

import time

START = time.perf_counter()  # "wall time from process start" counts from here

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("XINSLM_SHARED_DATA", ROOT.parent / "shared" / "data"))

GPU = {"n_layer": 6, "n_head": 6, "n_embd": 384, "context_len": 256, "batch": 64, "target": 1.47}
CPU = {"n_layer": 4, "n_head": 4, "n_embd": 128, "context_len": 64, "batch": 12, "target": 1.886}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="nanoGPT's CPU recipe sizes")
    parser.add_argument("--optimizer", default="muon", choices=["adamw", "muon"])
    parser.add_argument("--max-steps", type=int, default=None)
    # nanoGPT's lr; with Muon, AdamW's share is the embedding and head (1e-3 measured best
    # of 7e-4 .. 5e-3 there, see RESULTS.md).
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW's peak lr")
    parser.add_argument("--muon-lr", type=float, default=0.02)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--eval-every", type=int, default=None)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--dropout", type=float, default=None, help="0.2 on GPU, 0 on CPU")
    parser.add_argument("--compile", default="auto", choices=["auto", "true", "false"])
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument(
        "--shift-blocks", default="true", choices=["true", "false"], help="pretrain.shift_blocks"
    )
    args = parser.parse_args()

    import torch

    from xinslm.artifact import read_meta
    from xinslm.batches import BlockBatches, val_block_batches
    from xinslm.blocks import open_blocks
    from xinslm.config import PretrainParams, load_params
    from xinslm.device import seed_everything
    from xinslm.losses import loss_sums
    from xinslm.model import ModelConfig, NanoChatModel
    from xinslm.pack import pack_blocks
    from xinslm.tokenize_text import tokenize_text
    from xinslm.tokenizer import ByteTokenizer
    from xinslm.train import TrainJob, train_loop
    from xinslm.train_log import ConsoleLog

    class CurveLog(ConsoleLog):
        """The console's bar, and each val loss against wall seconds since process start."""

        def __init__(self) -> None:
            super().__init__("shakespeare")
            self.curve: list[tuple[int, float, float]] = []

        def metrics(self, step: int, metrics: dict) -> None:
            super().metrics(step, metrics)
            if "val/loss" in metrics:
                self.curve.append((step, time.perf_counter() - START, metrics["val/loss"]))

    sizes = CPU if args.cpu else GPU
    device = "cpu" if args.cpu else "auto"
    if args.cpu:
        torch.set_num_threads(os.cpu_count() or 1)
    max_steps = args.max_steps or 2000
    eval_every = args.eval_every or (250 if args.cpu else 50)
    work = Path(tempfile.mkdtemp(prefix="xinslm-shakespeare-"))
    (text,) = load_params(ROOT / "params.yaml", "text")
    text = dataclasses.replace(text, input=str(SHARED / "tinyshakespeare.txt"), val_fraction=0.1)
    tokenize_text(text, ByteTokenizer(), work / "tokens", work / "token-store")
    pack_blocks(work / "tokens", work / "blocks", sizes["context_len"])
    meta = read_meta(work / "blocks", "blocks")
    train, val = (open_blocks(work / "blocks", meta, s) for s in ("train", "val"))

    params = PretrainParams(
        max_steps=max_steps,
        batch_size=sizes["batch"],
        grad_accum=1,
        optimizer=args.optimizer,
        lr=args.lr,
        muon_lr=args.muon_lr,
        muon_momentum=0.95,
        min_lr_frac=0.1,
        warmup_steps=args.warmup if args.warmup is not None else max_steps // 20,
        weight_decay=args.weight_decay,
        beta1=0.9,
        beta2=0.99,
        grad_clip=1.0,
        log_every=eval_every,
        eval_every=eval_every,
        # GPU: all of val each time; CPU: 20 batches (15k tokens), as nanoGPT's CPU recipe.
        eval_batches=20 if args.cpu else 10**6,
        checkpoint_every=0,
        seed=args.seed,
        device=device,
        compile={"auto": "auto", "true": True, "false": False}[args.compile],
        nproc=1,
        fp8=False,
        shift_blocks=args.shift_blocks == "true",
        tokens_per_param=0.0,  # unused: max_steps is set
    )
    seed_everything(params.seed)
    config = ModelConfig(
        context_len=sizes["context_len"],
        n_layer=sizes["n_layer"],
        n_head=sizes["n_head"],
        n_kv_head=sizes["n_head"],
        n_embd=sizes["n_embd"],
        dropout=args.dropout if args.dropout is not None else (0.0 if args.cpu else 0.2),
        vocab_size=ByteTokenizer().vocab_size,
    )
    model = NanoChatModel(config)

    print(
        f"shakespeare-char ({'cpu' if args.cpu else 'gpu'}): {model.num_params():,} parameters, "
        f"{len(train)} train and {len(val)} val blocks of {sizes['context_len']}, "
        f"{params.optimizer}, dropout {config.dropout}, shift_blocks {params.shift_blocks}, "
        f"{max_steps} steps",
        flush=True,
    )
    job = TrainJob(
        name="shakespeare",
        params=params,
        out_path=work / "model.pt",
        live_dir=None,
        resume_path=None,
        data={},
        checkpoint_extra={"tokenizer": meta["tokenizer"]},
    )
    log = CurveLog()
    summary = train_loop(
        model,
        BlockBatches(train, params.batch_size, params.seed, params.shift_blocks),
        lambda: val_block_batches(val, params.batch_size, params.eval_batches),
        job,
        log,
    )
    total = time.perf_counter() - START
    curve = log.curve
    if args.cpu:  # the periodic evaluations saw 20 batches; the final model is judged on all
        nats, count = loss_sums(model, val_block_batches(val, 64, 10**6), torch.device("cpu"))
        print(f"final val loss on all of val: {nats / count:.4f}")
    print(f"\n{'step':>6} {'wall s':>8} {'val loss':>9}")
    for step, seconds, loss in curve:
        print(f"{step:>6} {seconds:>8.1f} {loss:>9.4f}")
    reached = [(s, t) for s, t, loss in curve if loss <= sizes["target"]]
    best = min(curve, key=lambda row: row[2])
    when = f"{reached[0][1]:.1f} s (step {reached[0][0]})" if reached else "not reached"
    print(
        f"\nval <= {sizes['target']}: {when}; best val {best[2]:.4f} at step {best[0]} "
        f"({best[1]:.1f} s); {total:.1f} s in all, {summary['tokens'] / summary['seconds']:,.0f} "
        "tokens/s in training"
    )


if __name__ == "__main__":
    main()
