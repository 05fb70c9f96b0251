"""Training compute from the model's shape (xinslm.flops), the horizon that
pretrain.tokens_per_param derives, and what the pretrain stage does with them: the derived
steps and width-scaled lr it trains with, and FLOPs and val bpb on every metric row."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from conftest import run_stage_ok, scratch_inputs, set_params, tiny_config

from xinslm.artifact import read_meta
from xinslm.blocks import open_blocks
from xinslm.checkpoint import load_checkpoint, model_from_checkpoint
from xinslm.flops import flops_per_token, horizon_steps, scaling_params
from xinslm.losses import read_token_bytes, text_loss_and_bpb
from xinslm.model import ModelConfig, NanoChatModel

D12 = ModelConfig(context_len=2048, n_layer=12, n_head=6, n_kv_head=6, n_embd=768, vocab_size=32768)


@pytest.mark.parametrize(
    "config",
    [
        tiny_config(),  # grouped-query attention: 2 heads share 1 kv head
        tiny_config(n_head=4, n_kv_head=4, n_embd=64),
        tiny_config(n_head=4, n_kv_head=1, n_layer=3),
        D12,
    ],
)
def test_scaling_params_are_every_weight_but_the_input_embedding(config: ModelConfig) -> None:
    with torch.device("meta"):  # shapes only
        model = NanoChatModel(config)
    assert scaling_params(config) == model.num_params() - model.wte.weight.numel()


def test_flops_per_token_counts_6_per_weight_and_attention_at_full_context() -> None:
    # d12 at vocab 32768, context 2048: 12 blocks of 12 * 768^2 weights and a 768 x 32768 head,
    # and 12 * 12 * 768 * 2048 for attention.
    assert scaling_params(D12) == 12 * 12 * 768**2 + 768 * 32768 == 110_100_480
    assert flops_per_token(D12) == 6 * 110_100_480 + 12 * 12 * 768 * 2048 == 887_095_296
    # The H100 figure: 514,495 tokens/s at d12 is 46.1% of 989 TFLOP/s.
    assert round(flops_per_token(D12) * 514_495 / 989e12, 3) == 0.461


def test_the_horizon_is_tokens_per_param_times_params_over_tokens_per_step_rounded_up() -> None:
    config = tiny_config(context_len=32, n_layer=1, n_head=1, n_kv_head=1, n_embd=128)
    assert scaling_params(config) == 12 * 128**2 + 128 * 265 == 230_528
    assert horizon_steps(config, 0.01, 256) == 10  # 9.005 steps: a last, partial one counts
    assert horizon_steps(config, 1.0, 2 * 230_528) == 1
    assert horizon_steps(config, 20.0, 2 * 230_528) == 10  # exactly 10: no step more


def tsv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.fixture(scope="module")
def depth_run(tmp_path_factory) -> Path:
    """pretrain (then sft, briefly) with model.depth 1 and max_steps 0: the horizon from 0.01
    tokens per parameter, every val block in each evaluation. The text is ten documents, two
    of which the hash rule holds out, so val holds a BOS target (no bytes: bpb leaves it out)."""
    work = scratch_inputs(tmp_path_factory.mktemp("flops") / "work")
    lines = (work / "data/example_data_text.txt").read_text().splitlines(keepends=True)
    (work / "data/texts").mkdir()
    size = -(-len(lines) // 10)
    for i in range(10):
        (work / f"data/texts/{i:02}.txt").write_text("".join(lines[i * size : (i + 1) * size]))
    set_params(work, "text", input="data/texts")
    set_params(work, "model", context_len=32, depth=1)
    set_params(
        work, "pretrain", max_steps=0, tokens_per_param=0.01, batch_size=8, warmup_steps=2,
        log_every=2, eval_every=4, eval_batches=1000, checkpoint_every=0, device="cpu",
    )  # fmt: skip
    set_params(work, "sft", max_steps=2, batch_size=4, eval_every=2, eval_batches=1, device="cpu")
    for stage in ("tokenize-text", "pack", "render-chat"):
        run_stage_ok(stage, work)
    assert read_meta(work / "data/tokens", "tokens")["documents"] == {"train": 8, "val": 2}
    (work / "pretrain.out").write_text(run_stage_ok("pretrain", work).stdout)
    (work / "sft.out").write_text(run_stage_ok("sft", work).stdout)
    return work


def test_depth_and_tokens_per_param_resolve_once_for_the_whole_run(depth_run: Path) -> None:
    out = (depth_run / "pretrain.out").read_text()
    lr = 0.006 * math.sqrt(6)  # depth 1: 128 wide, (128/768)^-0.5 = sqrt(6)
    assert "pretrain: model.depth 1: 1 layers, 128 wide, 1 heads of 128\n" in out
    assert f"pretrain: AdamW lr 0.006 * (128/768)^-0.5 = {lr:.6g} (muon_lr 0.04 as set)\n" in out
    assert (
        "pretrain: max_steps 0: 0.01 tokens per parameter * 230,528 scaling parameters / 256 "
        "tokens per step = 10 steps\n" in out
    )
    base = load_checkpoint(depth_run / "checkpoints/base.pt")
    shape = {k: base["model_config"][k] for k in ("n_layer", "n_embd", "n_head", "n_kv_head")}
    assert shape == {"n_layer": 1, "n_embd": 128, "n_head": 1, "n_kv_head": 1}
    assert base["step"] == base["train_params"]["max_steps"] == 10
    assert base["train_params"]["lr"] == pytest.approx(lr, rel=1e-15)
    lrs = [float(row["lr"]) for row in tsv(depth_run / "dvclive/pretrain/plots/metrics/lr.tsv")]
    assert max(lrs) == pytest.approx(lr, rel=1e-15)  # the schedule's peak is the scaled lr
    # sft scales its own lr for the base model's width the same way.
    chat = load_checkpoint(depth_run / "checkpoints/chat.pt")
    assert chat["train_params"]["lr"] == pytest.approx(0.002 * math.sqrt(6), rel=1e-15)
    assert "sft: AdamW lr 0.002 * (128/768)^-0.5 = " in (depth_run / "sft.out").read_text()


def test_every_metric_row_carries_the_flops_trained_so_far(depth_run: Path) -> None:
    base = load_checkpoint(depth_run / "checkpoints/base.pt")
    per_token = flops_per_token(ModelConfig(**base["model_config"]))
    assert per_token == 6 * 230_528 + 12 * 128 * 32 == 1_432_320
    metrics = depth_run / "dvclive/pretrain/plots/metrics"
    rows = tsv(metrics / "flops.tsv")
    assert [int(r["step"]) for r in rows] == [2, 4, 6, 8, 10]  # every log point
    for row in rows:  # 8 blocks of 32 tokens a step
        assert float(row["flops"]) == int(row["step"]) * 8 * 32 * per_token
    # val/flops: the same numbers at the evaluations, the x of val bpb in dvc.yaml's plot.
    val_bpb, val_flops = tsv(metrics / "val/bpb.tsv"), tsv(metrics / "val/flops.tsv")
    assert [int(r["step"]) for r in val_flops] == [int(r["step"]) for r in val_bpb] == [4, 8, 10]
    for row in val_flops:
        assert float(row["flops"]) == int(row["step"]) * 8 * 32 * per_token
    sft_rows = tsv(depth_run / "dvclive/sft/plots/metrics/flops.tsv")
    assert float(sft_rows[-1]["flops"]) > 0  # sft counts its own (padded) tokens from 0


def test_the_val_bpb_of_pretrain_is_the_evaluate_stages_on_the_same_blocks(
    depth_run: Path,
) -> None:
    """The last evaluation saw every val block: its bpb is what evaluate computes for
    base.pt (the same function, the same token_bytes table from data/blocks)."""
    blocks = depth_run / "data/blocks"
    meta = read_meta(blocks, "blocks")
    model = model_from_checkpoint(load_checkpoint(depth_run / "checkpoints/base.pt"))
    got = text_loss_and_bpb(
        model,
        open_blocks(blocks, meta, "val"),
        read_token_bytes(blocks, meta),
        8,
        torch.device("cpu"),
    )
    assert got["tokens"] - got["bytes"] == 1  # the second document's BOS
    metrics = depth_run / "dvclive/pretrain/plots/metrics"
    assert float(tsv(metrics / "val/bpb.tsv")[-1]["bpb"]) == got["val_bpb"]
    assert float(tsv(metrics / "val/loss.tsv")[-1]["loss"]) == got["val_loss"]
    assert got["val_bpb"] < 8  # the byte model learned something in 10 steps
