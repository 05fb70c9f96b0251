"""Stage sft: checkpoints/base.pt + data/chat -> checkpoints/chat.pt (loss on assistant tokens).

The model is built from base.pt's own config, so its shape cannot mismatch the base model.
"""

from xinslm import distributed
from xinslm.checkpoint import file_sha256, load_checkpoint, model_from_checkpoint
from xinslm.config import load_params
from xinslm.data import ChatBatches, ChatData, val_chat_batches
from xinslm.errors import XinslmError, run_main
from xinslm.train import pick_device, seed_everything, train_loop, use_compile

BASE, CHAT, OUT, LIVE = "checkpoints/base.pt", "data/chat", "checkpoints/chat.pt", "dvclive/sft"
RESUME = "checkpoints/resume/sft.pt"  # outside the stage's outs, so a rerun finds it


def main() -> None:
    (train_p,) = load_params("params.yaml", "sft")
    world = distributed.launch(train_p.nproc, "sft")  # nproc > 1: under torchrun
    base = load_checkpoint(BASE)
    train_data = ChatData(CHAT, "train", tokenizer=base["tokenizer"])
    val_data = ChatData(CHAT, "val", tokenizer=base["tokenizer"])
    if train_data.meta["context_len"] > base["model_config"]["context_len"]:
        raise XinslmError(f"{CHAT} was rendered for a longer context than {BASE} has")

    compiling = use_compile(train_p, pick_device(train_p.device))
    seed_everything(train_p.seed)
    model = model_from_checkpoint(base)
    print(f"sft: from {BASE} (step {base['step']}), {len(train_data):,} train conversations")

    def val_batches():
        # As many batches of batch_size as one process would read with the global batch.
        return val_chat_batches(val_data, train_p.batch_size, train_p.eval_batches * world.size)

    summary = train_loop(
        model,
        # A compiled model gets widths in steps of 64 tokens, not a new shape every batch.
        ChatBatches(
            train_data,
            train_p.batch_size,
            train_p.seed,
            pad_to=64 if compiling else 1,
            rank=world.rank,
            world=world.size,
        ),
        val_batches if len(val_data) else None,
        train_p,
        out_path=OUT,
        live_dir=LIVE,
        checkpoint_extra={
            "tokenizer": base["tokenizer"],
            "stage": "sft",
            "base_step": base["step"],
        },
        desc="sft",
        resume_path=RESUME,
        # A resume checkpoint counts only for the same base model and the same rendered chats.
        data_identity={"base_sha256": file_sha256(BASE), "chat": train_data.meta},
    )
    print(f"sft: {summary} -> {OUT}")


if __name__ == "__main__":
    run_main(main)
