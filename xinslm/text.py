"""Base-pretraining data: tokenize text files into a token stream, then pack it into blocks.

tokenize-text streams each file in chunks (memory stays bounded on a file of many GB), cut
only where the tokens come out as if the whole split were encoded at once, keeps every byte of
the text including newlines, starts each document (file) with BOS, and splits each file by
position: the first (1 - val_fraction) of its bytes go to train, the rest (from the next line
start) to val, as nanoGPT splits Shakespeare.

pack cuts the stream into [N, context_len + 1] blocks with stride context_len, so that with
input = block[:-1] and target = block[1:] every token after the first is a target exactly once.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from xinslm.errors import XinslmError
from xinslm.tokenizer import Tokenizer, safe_cut
from xinslm.tokens import ArrayWriter, atomic_dir, open_array, read_meta, token_dtype, write_meta


def text_files(path: str | Path) -> list[Path]:
    """The input files: `path` itself, or every *.txt under a directory, sorted."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise XinslmError(f"{path}: directory holds no .txt files")
        return files
    if not path.exists():
        raise XinslmError(f"{path}: text input not found (set text.input in params.yaml)")
    return [path]


def read_text_chunks(
    path: Path, val_fraction: float, chunk_bytes: int, utf8_errors: str = "strict"
) -> Iterator[tuple[str, str]]:
    """Yield (split, text) chunks of `path`, about chunk_bytes each, decoded as UTF-8: with
    utf8_errors 'strict' a bad byte is an error naming its offset, with 'replace' it becomes
    U+FFFD. The val split starts at the first line start in the last
    val_fraction of the bytes. Chunks end where `safe_cut` allows, so a split encoded chunk by
    chunk gives the ids of the split encoded whole; failing that (no such place in 8 chunks'
    worth of text) at a newline, and failing that (one very long line) anywhere."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        val_start = _line_start_from(f, size - int(size * val_fraction))
        yield from _decoded_chunks(f, path, "train", 0, val_start, chunk_bytes, utf8_errors)
        yield from _decoded_chunks(f, path, "val", val_start, size, chunk_bytes, utf8_errors)


def _line_start_from(f: BinaryIO, offset: int) -> int:
    """The first line start at or after `offset` (the file size if there is none)."""
    if offset <= 0:
        return 0
    f.seek(offset - 1)
    while block := f.read(1 << 16):
        newline = block.find(b"\n")
        if newline >= 0:
            return offset + newline
        offset += len(block)
    return offset - 1


def _decoded_chunks(
    f: BinaryIO, path: Path, split: str, begin: int, end: int, chunk_bytes: int, errors: str
) -> Iterator[tuple[str, str]]:
    decoder = codecs.getincrementaldecoder("utf-8")(errors=errors)
    f.seek(begin)
    pos, carry = begin, ""  # pos: the file offset of the next byte to read
    while pos < end:
        want = min(chunk_bytes, end - pos)
        data = f.read(want)
        if len(data) < want:
            raise XinslmError(f"{path}: file changed while it was being read")
        held = decoder.getstate()[0]  # bytes of a character cut by the last read
        last = pos + want == end
        try:
            text = carry + decoder.decode(data, final=last)
        except UnicodeDecodeError as e:
            start = pos - len(held) + e.start
            raise XinslmError(
                f"{path}: not valid UTF-8 at byte {start} ({e.reason}); fix the file, or set "
                "text.utf8_errors: replace to read bad bytes as U+FFFD"
            ) from None
        pos += want
        cut = len(text) if last else safe_cut(text, 0, len(text))
        if cut < 0 and len(text) < 8 * chunk_bytes:
            carry = text  # read on to a safe place to cut
            continue
        if cut < 0:  # none in 8 chunks: a newline will do, or any place on one long line
            cut = text.rfind("\n") + 1 or len(text)
        text, carry = text[:cut], text[cut:]
        if text:
            yield split, text


def tokenize_text(
    input_path: str | Path,
    tokenizer: Tokenizer,
    out_dir: str | Path,
    val_fraction: float,
    chunk_bytes: int = 4 << 20,
    utf8_errors: str = "strict",
) -> dict:
    """Write `train.bin` and `val.bin` token streams plus meta.json into `out_dir`."""
    files = text_files(input_path)
    dtype = token_dtype(tokenizer.vocab_size)
    counts = {"train": {"bytes": 0, "documents": 0}, "val": {"bytes": 0, "documents": 0}}
    sources = []
    with atomic_dir(out_dir) as tmp:
        writers = {s: ArrayWriter(tmp / f"{s}.bin", dtype) for s in ("train", "val")}
        for path in files:
            started = set()
            for split, text in read_text_chunks(path, val_fraction, chunk_bytes, utf8_errors):
                if split not in started:  # each document's part in a split starts with BOS
                    writers[split].write([tokenizer.bos_id])
                    counts[split]["documents"] += 1
                    started.add(split)
                writers[split].write(tokenizer.encode_array(text))
                counts[split]["bytes"] += len(text.encode("utf-8"))
            if not started:
                raise XinslmError(f"{path}: file is empty")
            sources.append({"path": str(path), "bytes": path.stat().st_size})
        arrays = {s: w.close() for s, w in writers.items()}
        if arrays["train"]["shape"][0] < 2:
            raise XinslmError(f"{input_path}: too little text to train on")
        text_tokens = {s: arrays[s]["shape"][0] - c["documents"] for s, c in counts.items()}
        meta = {
            "kind": "tokens",
            "tokenizer": tokenizer.identity(),
            "arrays": arrays,
            "text_bytes": {s: c["bytes"] for s, c in counts.items()},
            # Compression: UTF-8 bytes per token (BOS not counted); higher packs more text.
            "bytes_per_token": {
                s: round(c["bytes"] / text_tokens[s], 4) if text_tokens[s] else None
                for s, c in counts.items()
            },
            "documents": {s: c["documents"] for s, c in counts.items()},
            "val_fraction": val_fraction,
            "sources": sources,
        }
        write_meta(tmp, meta)
    return meta


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
            writer = ArrayWriter(tmp / f"{split}.bin", stream.dtype, (context_len + 1,))
            rows_per_chunk = max(1, (1 << 22) // (context_len + 1))
            for first in range(0, n_blocks, rows_per_chunk):
                last = min(n_blocks, first + rows_per_chunk)
                starts = np.arange(first, last) * context_len
                writer.write(stream[starts[:, None] + np.arange(context_len + 1)])
            arrays[split] = writer.close()
            stats[split] = {
                "blocks": n_blocks,
                "tokens_used": n_blocks * context_len + bool(n_blocks),
            }
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
