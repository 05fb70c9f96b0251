"""The artifact format: a directory of raw `.bin` arrays with one `meta.json` beside them.

`data/tokens`, `data/blocks` and `data/chat` are artifacts. meta.json says what made them:
their kind, the tokenizer's identity, each array's file, dtype and shape, and counts. Readers
memory-map the arrays and refuse an artifact of another kind or tokenizer. Writers build the
directory with `xinslm.atomic.atomic_dir`, so a failure never leaves half an artifact.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from xinslm.errors import XinslmError

META = "meta.json"


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits in it, else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


class ArrayWriter:
    """Appends 1-D or row chunks to a raw .bin file and records its dtype and shape. Use it as
    a context manager, so the file is closed also when writing fails."""

    def __init__(self, path: Path, dtype: np.dtype, row_shape: tuple[int, ...] = ()) -> None:
        self.path, self.dtype, self.row_shape = path, np.dtype(dtype), row_shape
        self.rows = 0
        self._file = open(path, "wb")  # noqa: SIM115 (closed by close())

    def write(self, values: np.ndarray | list) -> None:
        arr = np.asarray(values)
        if arr.size and (arr.min() < 0 or arr.max() > np.iinfo(self.dtype).max):
            raise XinslmError(f"{self.path.name}: value out of range for {self.dtype}")
        arr = arr.astype(self.dtype, copy=False).reshape(-1, *self.row_shape)
        self._file.write(arr.tobytes())
        self.rows += arr.shape[0]

    def __enter__(self) -> ArrayWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()  # may have been closed by close() already

    def close(self) -> dict:
        """Close the file; return its entry for meta.json's arrays."""
        self._file.close()
        return {
            "file": self.path.name,
            "dtype": self.dtype.name,
            "shape": [self.rows, *self.row_shape],
        }


def write_meta(directory: Path, meta: dict) -> None:
    (directory / META).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")


def read_meta(directory: str | Path, kind: str, tokenizer: dict | None = None) -> dict:
    """Read an artifact's meta.json and check it is a `kind` artifact made with `tokenizer`."""
    directory = Path(directory)
    path = directory / META
    if not path.is_file():
        raise XinslmError(f"{path}: missing; run the stage that makes {directory} first")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise XinslmError(f"{path}: corrupt ({e.msg})") from None
    if meta.get("kind") != kind:
        raise XinslmError(f"{path}: holds '{meta.get('kind')}' artifacts, expected '{kind}'")
    if tokenizer is not None:
        check_tokenizer(path, meta.get("tokenizer", {}), tokenizer)
    return meta


def check_tokenizer(source: str | Path, made_with: dict, expected: dict) -> None:
    """Refuse an artifact or checkpoint made with another tokenizer, naming what differs."""
    for key in ("name", "vocab_size", "special", "fingerprint"):
        if made_with.get(key) != expected.get(key):
            raise XinslmError(
                f"{source}: made with tokenizer {key}={made_with.get(key)!r}, but "
                f"{expected.get(key)!r} is expected; rerun the pipeline (dvc repro)"
            )


def open_array(directory: str | Path, meta: dict, name: str) -> np.ndarray:
    """Memory-map array `name` of an artifact, checking its file size against meta."""
    spec = meta["arrays"].get(name)
    if spec is None:
        raise XinslmError(f"{directory}/{META}: has no array '{name}'")
    path = Path(directory) / spec["file"]
    dtype, shape = np.dtype(spec["dtype"]), tuple(spec["shape"])
    expected = int(np.prod(shape)) * dtype.itemsize
    if not path.is_file() or path.stat().st_size != expected:
        raise XinslmError(f"{path}: size does not match {META} ({expected} bytes expected)")
    if expected == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=shape)


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, read a MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
