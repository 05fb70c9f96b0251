"""Stage pretrain: data/blocks -> checkpoints/base.pt (loss on every token)."""

from dataclasses import asdict

from xinslm import distributed
from xinslm.config import load_params
from xinslm.data import BlockBatches, val_block_batches
from xinslm.errors import XinslmError, run_main
from xinslm.model import ModelConfig, NanoChatModel
from xinslm.tokens import open_array, read_meta
from xinslm.train import seed_everything, train_loop

BLOCKS, OUT, LIVE = "data/blocks", "checkpoints/base.pt", "dvclive/pretrain"
RESUME = "checkpoints/resume/pretrain.pt"  # outside the stage's outs, so a rerun finds it


def main() -> None:
    model_p, train_p = load_params("params.yaml", "model", "pretrain")
    world = distributed.launch(train_p.nproc, "pretrain")  # nproc > 1: under torchrun
    meta = read_meta(BLOCKS, "blocks")
    if meta["context_len"] != model_p.context_len:
        raise XinslmError(
            f"{BLOCKS} was packed for context_len {meta['context_len']}, but model.context_len "
            f"is {model_p.context_len}: rerun pack (dvc repro)"
        )
    train_blocks = open_array(BLOCKS, meta, "train")
    val_blocks = open_array(BLOCKS, meta, "val")

    seed_everything(train_p.seed)
    config = ModelConfig(vocab_size=meta["tokenizer"]["vocab_size"], **asdict(model_p))
    model = NanoChatModel(config)
    print(f"pretrain: {model.num_params():,} parameters, {len(train_blocks):,} train blocks")

    def val_batches():
        # As many batches of batch_size as one process would read with the global batch.
        return val_block_batches(val_blocks, train_p.batch_size, train_p.eval_batches * world.size)

    summary = train_loop(
        model,
        BlockBatches(
            train_blocks,
            train_p.batch_size,
            train_p.seed,
            train_p.shift_blocks,
            rank=world.rank,
            world=world.size,
        ),
        val_batches if len(val_blocks) else None,
        train_p,
        out_path=OUT,
        live_dir=LIVE,
        checkpoint_extra={"tokenizer": meta["tokenizer"], "stage": "pretrain"},
        desc="pretrain",
        resume_path=RESUME,
        data_identity=meta,
    )
    print(f"pretrain: {summary} -> {OUT}")


if __name__ == "__main__":
    run_main(main)
