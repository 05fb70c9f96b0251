"""pack: the token streams -> `[N, context_len + 1]` blocks of each split, plus meta.json.

Blocks are cut with stride context_len, so block k holds stream tokens kT .. kT+T and
consecutive blocks share one token: with input = block[:-1] and target = block[1:], every
token after the first is a target exactly once. tokenize-text's table of each id's bytes
(`token_bytes`) comes along, for bits per byte.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xinslm.artifact import ArrayWriter, open_array, read_meta, write_meta
from xinslm.atomic import atomic_dir
from xinslm.errors import XinslmError


def pack_blocks(tokens_dir: str | Path, out_dir: str | Path, context_len: int) -> dict:
    """Write `[N, context_len + 1]` blocks of each split, stride context_len, plus meta.json."""
    meta_in = read_meta(tokens_dir, "tokens")
    arrays, stats = {}, {}
    with atomic_dir(out_dir) as tmp:
        for split in ("train", "val"):
            stream = open_array(tokens_dir, meta_in, split)
            n_blocks = max(0, (len(stream) - 1) // context_len)
            if split == "train" and n_blocks == 0:
                raise XinslmError(
                    f"{tokens_dir}: {len(stream)} train tokens make no block of "
                    f"context_len+1 = {context_len + 1}; lower model.context_len or add text"
                )
            rows_per_chunk = max(1, (1 << 22) // (context_len + 1))
            with ArrayWriter(tmp / f"{split}.bin", stream.dtype, (context_len + 1,)) as writer:
                for first in range(0, n_blocks, rows_per_chunk):
                    last = min(n_blocks, first + rows_per_chunk)
                    starts = np.arange(first, last) * context_len
                    writer.write(stream[starts[:, None] + np.arange(context_len + 1)])
                arrays[split] = writer.close()
            stats[split] = {
                "blocks": n_blocks,
                "tokens_used": n_blocks * context_len + bool(n_blocks),
            }
        # The bytes of each id, copied as they are: pretrain's and evaluate's bpb read them.
        token_bytes = open_array(tokens_dir, meta_in, "token_bytes")
        with ArrayWriter(tmp / "token_bytes.bin", token_bytes.dtype) as writer:
            writer.write(token_bytes)
            arrays["token_bytes"] = writer.close()
        meta = {
            "kind": "blocks",
            "tokenizer": meta_in["tokenizer"],
            "arrays": arrays,
            "context_len": context_len,
            "stats": stats,
            "text_bytes": meta_in["text_bytes"],
        }
        write_meta(tmp, meta)
    return meta
