"""pack: data/tokens -> data/blocks, the `[N, context_len + 1]` blocks of each split, described
rather than copied: meta.json (context_len, the block counts, the token shards they are read
from) and tokenize-text's table of each id's bytes (`token_bytes`, for bits per byte).

Blocks are cut with stride context_len, so block k holds stream tokens kT .. kT+T and
consecutive blocks share one token: with input = block[:-1] and target = block[1:], every
token after the first is a target exactly once. xinslm.blocks reads them from the token
shards, so the token stream is on disk once.
"""

from __future__ import annotations

import os
from pathlib import Path

from xinslm.artifact import ArrayWriter, open_array, read_meta, write_meta
from xinslm.atomic import atomic_dir
from xinslm.blocks import shard_list
from xinslm.errors import XinslmError


def pack_blocks(tokens_dir: str | Path, out_dir: str | Path, context_len: int) -> dict:
    """Write the blocks artifact of tokens_dir for context_len: its meta.json and token_bytes."""
    meta_in = read_meta(tokens_dir, "tokens")
    stats = {}
    for split in ("train", "val"):
        n_tokens = meta_in["tokens"][split]
        n_blocks = max(0, (n_tokens - 1) // context_len)
        if split == "train" and n_blocks == 0:
            raise XinslmError(
                f"{tokens_dir}: {n_tokens} train tokens make no block of "
                f"context_len+1 = {context_len + 1}; lower model.context_len or add text"
            )
        stats[split] = {"blocks": n_blocks, "tokens_used": n_blocks * context_len + bool(n_blocks)}
    with atomic_dir(out_dir) as tmp:
        # The bytes of each id, copied as they are (a few KB): pretrain's and evaluate's bpb.
        token_bytes = open_array(tokens_dir, meta_in, "token_bytes")
        with ArrayWriter(tmp / "token_bytes.bin", token_bytes.dtype) as writer:
            writer.write(token_bytes)
            arrays = {"token_bytes": writer.close()}
        meta = {
            "kind": "blocks",
            "tokenizer": meta_in["tokenizer"],
            "arrays": arrays,
            "context_len": context_len,
            "stats": stats,
            "text_bytes": meta_in["text_bytes"],
            # Where the blocks are read from (relative to this folder), and what it held.
            "tokens": {"dir": os.path.relpath(tokens_dir, out_dir), "shards": shard_list(meta_in)},
        }
        write_meta(tmp, meta)
    return meta
