"""Reading the token artifacts: a split's stream over data/tokens' shard arrays, and the
`[N, context_len + 1]` blocks that pack describes over it, without a second copy on disk.

Block k holds stream tokens kT .. kT+T (T = context_len): consecutive blocks share one token,
so with input = block[:-1] and target = block[1:] every token after the first is a target
exactly once. `TokenBlocks` reads them from the shards' files (a block that spans shards is
joined from their pieces) and indexes like the `[N, T+1]` array pack once wrote: `len()`,
`shape`, `blocks[rows]`, `blocks[first:last]`, `blocks[rows, 1:]`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xinslm.artifact import META, read_meta
from xinslm.errors import XinslmError


class TokenStream:
    """One split's tokens: the arrays of data/tokens' shards, one after another."""

    def __init__(self, tokens_dir: str | Path, meta: dict, split: str) -> None:
        self.dtype = np.dtype(meta["dtype"])
        self.files, counts = [], []
        for shard in meta["shards"]:
            path = Path(tokens_dir) / "shards" / f"{shard['key']}.{split}.bin"
            count = shard["tokens"][split]
            if not path.is_file() or path.stat().st_size != count * self.dtype.itemsize:
                raise XinslmError(f"{path}: missing, or not the size {META} says; rerun dvc repro")
            self.files.append(path)
            counts.append(count)
        self.starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens start .. stop-1 of the stream, from each shard they lie in."""
        pieces = [np.empty(0, self.dtype)]
        i = int(np.searchsorted(self.starts, start, side="right")) - 1
        while start < stop:
            end = min(stop, int(self.starts[i + 1]))
            if end > start:
                offset = (start - int(self.starts[i])) * self.dtype.itemsize
                pieces.append(np.fromfile(self.files[i], self.dtype, end - start, offset=offset))
            start, i = end, i + 1
        return np.concatenate(pieces)


class TokenBlocks:
    """The blocks of a stream, with stride context_len, read on demand."""

    def __init__(self, stream: TokenStream, context_len: int) -> None:
        self.stream, self.context_len = stream, context_len
        self.shape = (max(0, (len(stream) - 1) // context_len), context_len + 1)
        self.dtype = stream.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: object) -> np.ndarray:
        rows, columns = index if isinstance(index, tuple) else (index, slice(None))
        if isinstance(rows, slice):
            rows = range(*rows.indices(len(self)))
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < -len(self) or rows.max() >= len(self)):
            raise IndexError(f"block index out of range for {len(self)} blocks")
        width, step = self.shape[1], self.context_len
        out = np.empty((rows.size, width), self.dtype)
        for i, row in enumerate(rows.ravel() % max(len(self), 1)):
            out[i] = self.stream.read(row * step, row * step + width)
        return out.reshape(*rows.shape, width)[..., columns]


def open_blocks(blocks_dir: str | Path, meta: dict, split: str) -> TokenBlocks:
    """The `split` blocks of a blocks artifact (its meta.json read with read_meta), over the
    token artifact pack read, which must still be the one it read."""
    tokens_dir = Path(blocks_dir) / meta["tokens"]["dir"]
    tokens = read_meta(tokens_dir, "tokens", meta["tokenizer"])
    if shard_list(tokens) != meta["tokens"]["shards"]:
        raise XinslmError(
            f"{Path(blocks_dir) / META}: packed from other tokens than {tokens_dir} holds now; "
            "rerun pack (dvc repro)"
        )
    return TokenBlocks(TokenStream(tokens_dir, tokens, split), meta["context_len"])


def shard_list(tokens_meta: dict) -> list[dict]:
    """What a blocks artifact records of the tokens it reads: each shard's key and counts."""
    return [{"key": s["key"], "tokens": s["tokens"]} for s in tokens_meta["shards"]]
