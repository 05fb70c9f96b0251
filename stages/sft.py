"""Stage sft: checkpoints/base.pt + data/chat -> checkpoints/chat.pt (loss on assistant tokens).

The model is built from base.pt's own config, so its shape cannot mismatch the base model.
With sft.text_rows > 0, each batch also holds windows of data/blocks (every token learned), so
the chat model keeps what pretraining taught.
"""

import numpy as np

from xinslm import distributed
from xinslm.artifact import file_sha256, read_meta
from xinslm.batches import BlockBatches, ChatBatches, ChatData, MixedBatches, val_chat_batches
from xinslm.blocks import open_blocks
from xinslm.checkpoint import load_checkpoint, model_from_checkpoint
from xinslm.config import load_params
from xinslm.device import pick_device, seed_everything, use_compile
from xinslm.errors import XinslmError, run_main
from xinslm.memory import check_training_memory
from xinslm.model import ModelConfig
from xinslm.optim import REFERENCE_WIDTH, scale_adamw_lr
from xinslm.train import TrainJob, train_loop

BASE, CHAT, OUT, LIVE = "checkpoints/base.pt", "data/chat", "checkpoints/chat.pt", "dvclive/sft"
BLOCKS = "data/blocks"  # pretraining text, mixed in with sft.text_rows
RESUME = "checkpoints/resume/sft.pt"  # outside the stage's outs, so a rerun finds it


def main() -> None:
    model_p, p = load_params("params.yaml", "model", "sft")
    world = distributed.launch(p.nproc, "sft")  # nproc > 1: under torchrun
    base = load_checkpoint(BASE)
    train_data, val_data = (ChatData(CHAT, s, base["tokenizer"]) for s in ("train", "val"))
    if train_data.meta["context_len"] > base["model_config"]["context_len"]:
        raise XinslmError(f"{CHAT} was rendered for a longer context than {BASE} has")

    if model_p.depth > 0:  # lr is a 768-wide model's, as pretrain's (README: model.depth)
        width, lr = base["model_config"]["n_embd"], p.lr
        p = scale_adamw_lr(p, width)
        print(f"sft: AdamW lr {lr:g} * ({width}/{REFERENCE_WIDTH})^-0.5 = {p.lr:.6g}")

    # A compiled model gets widths in steps of 64 tokens, not a new shape every batch.
    pad_to = 64 if use_compile(p.compile, pick_device(p.device)) else 1
    # Before the model is built: the widest batch is the longest conversation, padded.
    config = ModelConfig(**base["model_config"])
    longest = int(np.diff(train_data.offsets).max(initial=1))
    width = min(-(-longest // pad_to) * pad_to, config.context_len)
    if p.text_rows:  # text windows are whole: the batch is context_len wide
        width = config.context_len
    keys = "sft.batch_size, sft.text_rows, or a smaller base model (model.*, then pretrain)"
    print(check_training_memory("sft", config, p, p.batch_size + p.text_rows, width, keys))

    seed_everything(p.seed)
    model = model_from_checkpoint(base)
    print(f"sft: from {BASE} (step {base['step']}), {len(train_data):,} train conversations")
    batches = ChatBatches(train_data, p.batch_size, p.seed, pad_to, *world.slot)
    data = {"base_sha256": file_sha256(BASE), "chat": train_data.meta}
    if p.text_rows:
        blocks_meta = read_meta(BLOCKS, "blocks", base["tokenizer"])
        if blocks_meta["context_len"] != config.context_len:
            raise XinslmError(f"{BLOCKS} was packed for another context than {BASE} has")
        blocks = open_blocks(BLOCKS, blocks_meta, "train")
        text = BlockBatches(blocks, p.text_rows, p.seed, True, *world.slot)
        batches = MixedBatches(batches, text)
        data["blocks"] = blocks_meta
        print(f"sft: {p.text_rows} windows of {BLOCKS} in each batch (sft.text_rows)")

    def val_batches():  # the same first batches at every evaluation
        return val_chat_batches(val_data, p.batch_size, p.eval_batches * world.size)

    job = TrainJob(
        name="sft",
        params=p,
        out_path=OUT,
        live_dir=LIVE,
        resume_path=RESUME,
        # A resume checkpoint counts only for the same base model and the same rendered chats.
        data=data,
        checkpoint_extra={
            "tokenizer": base["tokenizer"],
            "stage": "sft",
            "base_step": base["step"],
        },
    )
    summary = train_loop(model, batches, val_batches if len(val_data) else None, job)
    print(f"sft: {summary} -> {OUT}")


if __name__ == "__main__":
    run_main(main)
