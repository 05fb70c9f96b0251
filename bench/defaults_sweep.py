"""The defaults' sweep (issue 19): pretrain and sft settings on the pipeline's own data.

    dvc repro pack render-chat      # the artifacts this reads: data/blocks, data/chat
    python bench/defaults_sweep.py --pretrain "" "optimizer=muon" "optimizer=muon muon_lr=0.04" \
                                   --sft "" "max_steps=200 lr=0.0005"

Each --pretrain variant is params.yaml's pretrain section with the given key=value changes;
each trains from the same seed and is scored as the evaluate stage scores base.pt (val bits
per byte over all of the held-out blocks). Then each --sft variant (params.yaml's sft section
with its changes) fine-tunes the best base model (lowest val bpb, or --sft-base's variant) and
is scored as evaluate scores chat.pt: the assistant loss over every held-out conversation and
the val bpb of the held-out text (what SFT kept of pretraining). An empty string is the
section as params.yaml has it. Runs in-process, no dvc; prints a table per stage.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xinslm.artifact import read_meta  # noqa: E402
from xinslm.batches import BlockBatches, ChatBatches, ChatData, MixedBatches  # noqa: E402
from xinslm.blocks import open_blocks  # noqa: E402
from xinslm.config import parse_section  # noqa: E402
from xinslm.device import pick_device, seed_everything  # noqa: E402
from xinslm.losses import assistant_loss, read_token_bytes, text_loss_and_bpb  # noqa: E402
from xinslm.model import ModelConfig, NanoChatModel  # noqa: E402
from xinslm.train import TrainJob, train_loop  # noqa: E402
from xinslm.train_log import TrainLog  # noqa: E402

BLOCKS, CHAT = "data/blocks", "data/chat"


def section(doc: dict, name: str, changes: str):
    """params.yaml's `name` section with `key=value ...` changes (values read as YAML)."""
    raw = dict(doc[name])
    for item in changes.split():
        key, value = item.split("=", 1)
        if key not in raw:
            raise SystemExit(f"{name}.{key}: not a key of params.yaml's {name} section")
        raw[key] = yaml.safe_load(value)
    return parse_section(name, {**raw, "checkpoint_every": 0}, "params.yaml")


def train(model: NanoChatModel, batches, val, params, name: str, work: Path) -> float:
    job = TrainJob(name, params, work / f"{name}.pt", None, None, {}, {"stage": name})
    start = time.perf_counter()
    train_loop(model, batches, val, job, TrainLog())
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain", nargs="+", default=[""])
    parser.add_argument("--sft", nargs="+", default=[""])
    parser.add_argument("--sft-base", help="the --pretrain variant sft starts from (default: best)")
    args = parser.parse_args()
    doc = yaml.safe_load(Path("params.yaml").read_text())
    model_p = parse_section("model", doc["model"], "params.yaml")
    meta = read_meta(BLOCKS, "blocks")
    train_blocks, val_blocks = (open_blocks(BLOCKS, meta, s) for s in ("train", "val"))
    token_bytes = read_token_bytes(BLOCKS, meta)
    chats = {s: ChatData(CHAT, s, meta["tokenizer"]) for s in ("train", "val")}
    config = ModelConfig.from_params(model_p, meta["tokenizer"]["vocab_size"])
    work = Path(tempfile.mkdtemp(prefix="defaults_sweep_"))

    print(f"{'pretrain variant':<44} {'val bpb':>8} {'seconds':>8}", flush=True)
    bases = {}
    for changes in args.pretrain:
        p = section(doc, "pretrain", changes)
        seed_everything(p.seed)
        model = NanoChatModel(config)
        batches = BlockBatches(train_blocks, p.batch_size, p.seed, p.shift_blocks)
        seconds = train(model, batches, None, p, "pretrain", work)
        bpb = text_loss_and_bpb(model, val_blocks, token_bytes, 64, pick_device(p.device))
        bases[changes] = (bpb["val_bpb"], model)
        name = changes or "(params.yaml)"
        print(f"{name:<44} {bpb['val_bpb']:>8.4f} {seconds:>8.1f}", flush=True)

    start_from = args.sft_base
    if start_from is None:
        start_from = min(bases, key=lambda k: bases[k][0])
    base_bpb, base_model = bases[start_from]
    print(f"\nsft from pretrain variant {start_from or '(params.yaml)'!r}, val bpb {base_bpb:.4f}")
    print(f"{'sft variant':<44} {'assistant':>9} {'val bpb':>8} {'/ base':>7} {'seconds':>8}")
    for changes in args.sft:
        p = section(doc, "sft", changes)
        seed_everything(p.seed)
        model = copy.deepcopy(base_model)
        batches = ChatBatches(chats["train"], p.batch_size, p.seed, 1)
        if p.text_rows:  # as stages/sft.py mixes them
            batches = MixedBatches(batches, BlockBatches(train_blocks, p.text_rows, p.seed, True))
        seconds = train(model, batches, None, p, "sft", work)
        device = pick_device(p.device)
        loss = assistant_loss(model, chats["val"], 64, device)
        bpb = text_loss_and_bpb(model, val_blocks, token_bytes, 64, device)["val_bpb"]
        print(
            f"{changes or '(params.yaml)':<44} {loss:>9.4f} {bpb:>8.4f} {bpb / base_bpb:>7.2f} "
            f"{seconds:>8.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
