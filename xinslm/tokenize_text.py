"""tokenize-text: the text inputs -> `train.bin` and `val.bin` token streams plus meta.json.

Each file is one document: its part in each split starts with BOS, and every byte of it,
newlines included, is kept. `token_bytes.bin` holds the UTF-8 bytes each id stands for
(bits per byte divide by them). Files are read in bounded chunks (xinslm.text), so memory stays
flat on a file of many GB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xinslm.artifact import ArrayWriter, token_dtype, write_meta
from xinslm.atomic import atomic_dir
from xinslm.errors import XinslmError
from xinslm.text import read_text_chunks, text_files
from xinslm.tokenizer import Tokenizer


def tokenize_text(
    input_path: str | Path,
    tokenizer: Tokenizer,
    out_dir: str | Path,
    val_fraction: float,
    chunk_bytes: int,
    utf8_errors: str = "strict",
) -> dict:
    """Write `train.bin` and `val.bin` token streams plus meta.json into `out_dir`."""
    files = text_files(input_path)
    dtype = token_dtype(tokenizer.vocab_size)
    counts = {"train": {"bytes": 0, "documents": 0}, "val": {"bytes": 0, "documents": 0}}
    sources = []
    with (
        atomic_dir(out_dir) as tmp,
        ArrayWriter(tmp / "train.bin", dtype) as train,
        ArrayWriter(tmp / "val.bin", dtype) as val,
    ):
        writers = {"train": train, "val": val}
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
        # The UTF-8 bytes each id stands for (0: special tokens), carried on through pack's
        # blocks, so that pretrain's val bpb and evaluate's read the same table.
        with ArrayWriter(tmp / "token_bytes.bin", np.uint32) as lengths:
            lengths.write(tokenizer.token_byte_lengths())
            arrays["token_bytes"] = lengths.close()
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
