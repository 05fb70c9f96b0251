"""Stage pretrain: data/blocks -> checkpoints/base.pt (loss on every token)."""

from xinslm import distributed
from xinslm.artifact import open_array, read_meta
from xinslm.batches import BlockBatches, val_block_batches
from xinslm.config import load_params
from xinslm.device import seed_everything
from xinslm.errors import XinslmError, run_main
from xinslm.model import ModelConfig, NanoChatModel
from xinslm.train import TrainJob, train_loop

BLOCKS, OUT, LIVE = "data/blocks", "checkpoints/base.pt", "dvclive/pretrain"
RESUME = "checkpoints/resume/pretrain.pt"  # outside the stage's outs, so a rerun finds it


def main() -> None:
    model_p, p = load_params("params.yaml", "model", "pretrain")
    world = distributed.launch(p.nproc, "pretrain")  # nproc > 1: under torchrun
    meta = read_meta(BLOCKS, "blocks")
    if meta["context_len"] != model_p.context_len:
        raise XinslmError(
            f"{BLOCKS} was packed for context_len {meta['context_len']}, but model.context_len "
            f"is {model_p.context_len}: rerun pack (dvc repro)"
        )
    train_blocks, val_blocks = (open_array(BLOCKS, meta, s) for s in ("train", "val"))

    seed_everything(p.seed)
    model = NanoChatModel(ModelConfig.from_params(model_p, meta["tokenizer"]["vocab_size"]))
    print(f"pretrain: {model.num_params():,} parameters, {len(train_blocks):,} train blocks")
    # Each process reads its slice of every global batch; val: the batches of all of them.
    batches = BlockBatches(train_blocks, p.batch_size, p.seed, p.shift_blocks, *world.slot)

    def val_batches():  # the same first batches at every evaluation
        return val_block_batches(val_blocks, p.batch_size, p.eval_batches * world.size)

    job = TrainJob(
        name="pretrain",
        params=p,
        out_path=OUT,
        live_dir=LIVE,
        resume_path=RESUME,
        data=meta,
        checkpoint_extra={"tokenizer": meta["tokenizer"], "stage": "pretrain"},
    )
    summary = train_loop(model, batches, val_batches if len(val_blocks) else None, job)
    print(f"pretrain: {summary} -> {OUT}")


if __name__ == "__main__":
    run_main(main)
