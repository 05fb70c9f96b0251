"""The blocks of data/blocks read from data/tokens' shards (xinslm.blocks): the same [N, T+1]
windows, in the same order for a seed, as the array pack used to write from the concatenated
stream, so pretraining reads exactly the blocks it read before; a block across several shards
is joined from them."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
from conftest import run_stage_ok, scratch_inputs, set_params, token_ids, tokenize

from xinslm import blocks as blocks_module
from xinslm.artifact import read_meta
from xinslm.batches import BlockBatches, val_block_batches
from xinslm.blocks import open_blocks
from xinslm.errors import XinslmError
from xinslm.pack import pack_blocks
from xinslm.tokenizer import ByteTokenizer

BYTE = ByteTokenizer()
T = 16


def old_blocks(stream: list[int], context_len: int = T) -> np.ndarray:
    """The [N, T+1] array pack wrote before: stride T over the concatenated stream."""
    stream = np.asarray(stream, dtype=np.uint16)
    n = max(0, (len(stream) - 1) // context_len)
    return stream[np.arange(n)[:, None] * context_len + np.arange(context_len + 1)]


def sharded_corpus(folder, docs_per_shard=(1, 3, 1, 1, 7, 2, 1, 12, 1, 4)) -> None:
    """Shards of short documents, some of them shorter than a block."""
    folder.mkdir(parents=True)
    n = 0
    for i, count in enumerate(docs_per_shard):
        docs = [f"doc {n + j}{'.' * ((n + j) % 7)}\n" for j in range(count)]
        n += count
        (folder / f"s{i:02}.jsonl").write_text(
            "".join(json.dumps({"text": d}) + "\n" for d in docs)
        )


@pytest.fixture
def packed(tmp_path):
    sharded_corpus(tmp_path / "corpus")
    tokenize(tmp_path / "corpus", BYTE, tmp_path / "tokens", val_fraction=0.3)
    meta = pack_blocks(tmp_path / "tokens", tmp_path / "blocks", T)
    return tmp_path, meta


def test_blocks_are_the_old_arrays_rows_across_shard_boundaries(packed):
    tmp_path, meta = packed
    for split in ("train", "val"):
        blocks = open_blocks(tmp_path / "blocks", meta, split)
        old = old_blocks(token_ids(tmp_path / "tokens", split))
        assert len(old) >= 3 and blocks.shape == old.shape and len(blocks) == len(old)
        assert np.array_equal(blocks[:], old)
        rows = np.random.default_rng(0).permutation(len(old))
        assert np.array_equal(blocks[rows], old[rows])
        assert np.array_equal(blocks[rows + 0, 1:], old[rows, 1:])
        assert np.array_equal(blocks[2:5], old[2:5]) and np.array_equal(blocks[-1], old[-1])
        assert blocks[np.array([], dtype=np.int64)].shape == (0, T + 1)
        with pytest.raises(IndexError):
            blocks[[len(old)]]
    # Some block is joined from three shards (shards shorter than a block).
    counts = [s["tokens"]["train"] for s in read_meta(tmp_path / "tokens", "tokens")["shards"]]
    starts = np.cumsum([0, *counts])

    def shards_read(k: int) -> int:
        first, end = k * T, k * T + T + 1
        return sum(
            bool(c) and starts[i] < end and starts[i + 1] > first for i, c in enumerate(counts)
        )

    assert max(shards_read(k) for k in range(meta["stats"]["train"]["blocks"])) >= 3


@pytest.mark.parametrize("shift", [False, True])
def test_pretraining_batches_are_those_of_the_old_blocks_for_a_seed(packed, shift):
    tmp_path, meta = packed
    new = BlockBatches(open_blocks(tmp_path / "blocks", meta, "train"), 3, 7, shift)
    old = BlockBatches(old_blocks(token_ids(tmp_path / "tokens", "train")), 3, 7, shift)
    for _ in range(new.indices.n + 2):  # batches of 3: over three epochs
        (x_new, y_new), (x_old, y_old) = next(new), next(old)
        assert torch.equal(x_new, x_old) and torch.equal(y_new, y_old)
    resumed = BlockBatches(open_blocks(tmp_path / "blocks", meta, "train"), 3, 7, shift)
    resumed.load_state_dict(new.state_dict())
    assert all(torch.equal(next(resumed)[0], next(old)[0]) for _ in range(5))
    val = open_blocks(tmp_path / "blocks", meta, "val")
    val_old = old_blocks(token_ids(tmp_path / "tokens", "val"))
    pairs = zip(val_block_batches(val, 2, 9), val_block_batches(val_old, 2, 9), strict=True)
    for (a, b), (c, d) in pairs:
        assert torch.equal(a, c) and torch.equal(b, d)


def test_blocks_refuse_tokens_changed_since_pack(packed):
    tmp_path, meta = packed
    (tmp_path / "corpus" / "s99.jsonl").write_text('{"text": "one more\\n"}\n')
    tokenize(tmp_path / "corpus", BYTE, tmp_path / "tokens", val_fraction=0.3)
    with pytest.raises(XinslmError, match=re.escape(
        f"{tmp_path / 'blocks' / 'meta.json'}: packed from other tokens than "
        f"{tmp_path / 'blocks' / '../tokens'} holds now; rerun pack (dvc repro)"
    )):  # fmt: skip
        open_blocks(tmp_path / "blocks", meta, "train")


def test_pretrain_on_the_new_layout_trains_what_the_old_blocks_trained(tmp_path, monkeypatch):
    """The stage itself, run on a sharded corpus, then again with data/blocks read as the old
    [N, T+1] array of the concatenated stream: the same checkpoint, byte for byte."""
    work = scratch_inputs(tmp_path / "new")
    sharded_corpus(work / "corpus")
    set_params(work, "text", input="corpus", val_fraction=0.3)
    set_params(work, "model", context_len=T, n_layer=1, n_head=2, n_kv_head=1, n_embd=16)
    set_params(
        work, "pretrain", max_steps=12, batch_size=4, warmup_steps=2, log_every=2,
        eval_every=6, eval_batches=2, checkpoint_every=0, device="cpu", shift_blocks=True,
    )  # fmt: skip
    for stage in ("tokenize-text", "pack", "pretrain"):
        run_stage_ok(stage, work)
    old = tmp_path / "old"
    shutil.copytree(work, old)
    (old / "checkpoints" / "base.pt").unlink()

    def as_before(blocks_dir, meta, split):
        path = tmp_path / f"{split}.bin"  # what pack wrote before: the blocks themselves
        old_blocks(token_ids(old / "data" / "tokens", split)).tofile(path)
        shape = (meta["stats"][split]["blocks"], T + 1)
        return np.memmap(path, np.uint16, "r", shape=shape) if shape[0] else np.zeros(shape)

    monkeypatch.setattr(blocks_module, "open_blocks", as_before)
    run_stage_ok("pretrain", old)
    new_bytes = (work / "checkpoints" / "base.pt").read_bytes()
    assert (old / "checkpoints" / "base.pt").read_bytes() == new_bytes
