"""Stage pretrain: data/blocks (over data/tokens) -> checkpoints/base.pt (loss on every token)."""

import dataclasses

from xinslm import distributed
from xinslm.artifact import read_meta
from xinslm.batches import BlockBatches, val_block_batches
from xinslm.blocks import open_blocks
from xinslm.config import ModelParams, PretrainParams, load_params
from xinslm.device import seed_everything
from xinslm.errors import XinslmError, run_main
from xinslm.flops import horizon_steps, scaling_params
from xinslm.losses import read_token_bytes
from xinslm.memory import check_training_memory
from xinslm.model import ModelConfig, NanoChatModel
from xinslm.optim import REFERENCE_WIDTH, scale_adamw_lr
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
    train_blocks, val_blocks = (open_blocks(BLOCKS, meta, s) for s in ("train", "val"))

    config = ModelConfig.from_params(model_p, meta["tokenizer"]["vocab_size"])
    # Before anything is built or derived from the size: a model that cannot fit stops here.
    size = "model.depth" if model_p.depth > 0 else "model.n_embd, model.n_layer"
    keys = f"{size}, pretrain.batch_size (grad_accum keeps the tokens per step), model.context_len"
    print(check_training_memory("pretrain", config, p, p.batch_size, config.context_len, keys))
    p = resolve_params(model_p, p, config)
    seed_everything(p.seed)
    model = NanoChatModel(config)
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
        # val bpb as the evaluate stage computes it, from the same table of each id's bytes
        token_bytes=read_token_bytes(BLOCKS, meta),
    )
    summary = train_loop(model, batches, val_batches if len(val_blocks) else None, job)
    print(f"pretrain: {summary} -> {OUT}")


def resolve_params(model_p: ModelParams, p: PretrainParams, config: ModelConfig) -> PretrainParams:
    """The settings in effect, said once: with model.depth, the AdamW lr scaled for the
    width; with max_steps 0, the steps from tokens_per_param. Everything after this (the loop,
    the schedule, the checkpoint's train_params) sees only the result."""
    if model_p.depth > 0:
        print(
            f"pretrain: model.depth {model_p.depth}: {config.n_layer} layers, {config.n_embd} "
            f"wide, {config.n_head} heads of {config.n_embd // config.n_head}"
        )
        lr = p.lr
        p = scale_adamw_lr(p, config.n_embd)
        print(
            f"pretrain: AdamW lr {lr:g} * ({config.n_embd}/{REFERENCE_WIDTH})^-0.5 = "
            f"{p.lr:.6g} (muon_lr {p.muon_lr:g} as set)"
        )
    if p.max_steps == 0:
        tokens_per_step = p.batch_size * p.grad_accum * p.nproc * config.context_len
        steps = horizon_steps(config, p.tokens_per_param, tokens_per_step)
        print(
            f"pretrain: max_steps 0: {p.tokens_per_param:g} tokens per parameter * "
            f"{scaling_params(config):,} scaling parameters / {tokens_per_step:,} tokens per "
            f"step = {steps:,} steps"
        )
        p = dataclasses.replace(p, max_steps=steps)
    return p


if __name__ == "__main__":
    run_main(main)
