"""Token artifacts: memory-mapped arrays with a meta.json beside them, written atomically.

An artifact is a directory (`data/tokens`, `data/blocks`, `data/chat`) holding raw `.bin`
arrays and one `meta.json` that says what made them: kind, tokenizer identity, each array's
file, dtype and shape, and counts. It is built in a temporary sibling directory and renamed
into place only when complete, so a failure never leaves a half-written artifact.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from xinslm.errors import XinslmError

META = "meta.json"


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits in it, else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def _clear_leftovers(path: Path) -> None:
    """Remove temporary siblings of `path` that a killed run left behind."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is flushed and renamed to `path`,
    so a reader (or a kill at any moment) sees the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clear_leftovers(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; on success it replaces `path` whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clear_leftovers(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    old = tmp.with_name(tmp.name.replace(".tmp", ".old.tmp"))
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        # Two renames, no copying: the old directory steps aside, the new one takes its name.
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


class ArrayWriter:
    """Appends 1-D or row chunks to a raw .bin file and records its dtype and shape."""

    def __init__(self, path: Path, dtype: np.dtype, row_shape: tuple[int, ...] = ()) -> None:
        self.path, self.dtype, self.row_shape = path, np.dtype(dtype), row_shape
        self.rows = 0
        self._file = open(path, "wb")

    def write(self, values: np.ndarray | list) -> None:
        arr = np.asarray(values)
        if arr.size and (arr.min() < 0 or arr.max() > np.iinfo(self.dtype).max):
            raise XinslmError(f"{self.path.name}: value out of range for {self.dtype}")
        arr = arr.astype(self.dtype, copy=False).reshape(-1, *self.row_shape)
        self._file.write(arr.tobytes())
        self.rows += arr.shape[0]

    def close(self) -> dict:
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
