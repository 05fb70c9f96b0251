"""The pretraining corpus: the shards of `text.input`, their documents, and which split each
document goes to.

`text.input` is one file or a folder of shards, read in the sorted order of their paths under
it: a `.txt` file is one document, a `.jsonl` or `.parquet` file one document per record (its
`text.field`). Other files in the folder are ignored.

The split: a lone text file is split by position, as nanoGPT splits Shakespeare (its last
val_fraction, from a line start, is val; xinslm.text). Anything else goes to train or val a
whole document at a time, by a hash of its UTF-8 text: the same text lands in the same split
whatever shard, format or order it comes in, so a shard's tokens depend on that shard alone.
"""

from __future__ import annotations

import codecs
import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

from xinslm.errors import XinslmError
from xinslm.text import BadLine, read_jsonl, read_text_chunks, valid_string

FORMATS = {".txt": "txt", ".jsonl": "jsonl", ".parquet": "parquet"}
PARQUET_BATCH = 256  # records decoded at a time: memory stays about one row group
REPLACE_HINT = "set text.utf8_errors: replace to read bad bytes as U+FFFD"


@dataclass(frozen=True)
class Shard:
    path: Path
    name: str  # its path under text.input (a lone file: its file name)
    format: str  # txt, jsonl or parquet
    by_position: bool  # a lone text file: split by position, not by document


@dataclass(frozen=True)
class Reading:
    """How the documents are read: the text params that change what is read."""

    val_fraction: float
    field: str
    utf8_errors: str
    chunk_bytes: int


def find_shards(input_path: str | Path) -> list[Shard]:
    """The shards of `input_path`: the file itself, or each .txt, .jsonl and .parquet file
    under the folder, sorted by its path there."""
    path = Path(input_path)
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.suffix in FORMATS and p.is_file()]
        if not files:
            raise XinslmError(f"{path}: directory holds no .txt, .jsonl or .parquet files")
        names = sorted((p.relative_to(path).as_posix(), p) for p in files)
        return [Shard(p, name, FORMATS[p.suffix], False) for name, p in names]
    if not path.is_file():
        raise XinslmError(f"{path}: text input not found (set text.input in params.yaml)")
    kind = FORMATS.get(path.suffix, "txt")  # a lone file of any other name is text
    return [Shard(path, path.name, kind, kind == "txt")]


def in_val(text: str, val_fraction: float) -> bool:
    """Whether a document goes to val: the first 8 bytes of the SHA-256 of its UTF-8 text, as a
    big-endian integer, are below val_fraction * 2**64."""
    return in_val_digest(hashlib.sha256(text.encode("utf-8")).digest(), val_fraction)


def in_val_digest(digest: bytes, val_fraction: float) -> bool:
    return int.from_bytes(digest[:8], "big") < int(val_fraction * 2**64)


def documents(shard: Shard, reading: Reading) -> Iterator[tuple[str, Iterable[str]]]:
    """Each document of `shard` as (split, its text in pieces), in order. Pieces are cut where
    encoding them one by one gives the ids of encoding the document whole (xinslm.text); read
    each document's pieces before asking for the next document. A lone text file gives its
    train part and its val part, each a document."""
    errors = reading.utf8_errors
    if shard.by_position:
        chunks = read_text_chunks(shard.path, reading.val_fraction, reading.chunk_bytes, errors)
        for split, group in groupby(chunks, key=lambda chunk: chunk[0]):
            yield split, (text for _, text in group)
    elif shard.format == "txt":  # a first pass: the split is known before the tokens
        digest = hashlib.sha256()
        for piece in _pieces(shard.path, reading):
            digest.update(piece.encode("utf-8"))
        split = "val" if in_val_digest(digest.digest(), reading.val_fraction) else "train"
        yield split, _pieces(shard.path, reading)
    else:
        records = jsonl_texts if shard.format == "jsonl" else parquet_texts
        for text in records(shard.path, reading.field, errors):
            yield ("val" if in_val(text, reading.val_fraction) else "train"), [text]


def _pieces(path: Path, reading: Reading) -> Iterator[str]:
    chunks = read_text_chunks(path, 0.0, reading.chunk_bytes, reading.utf8_errors)
    return (text for _, text in chunks)


def jsonl_texts(path: Path, field: str, errors: str) -> Iterator[str]:
    """The `field` of each record of a JSONL file, line by line (xinslm.text.read_jsonl: blank
    lines, a UTF-8 BOM and CRLF line ends are fine); a bad record is an error naming file:line."""
    for number, record in read_jsonl(path, errors, "text.utf8_errors", strings=False):
        where = f"{path}:{number}"
        if isinstance(record, BadLine):
            raise XinslmError(f"{where}: {record.problem}")
        yield _record_text(where, record, field, errors)


def _record_text(where: str, record: object, field: str, errors: str) -> str:
    if not isinstance(record, dict):
        raise XinslmError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if field not in record:
        raise XinslmError(
            f"{where}: missing field '{field}' (text.field names the field that holds the text)"
        )
    text = record[field]
    if not isinstance(text, str):
        raise XinslmError(f"{where}: field '{field}' must be a string, got {type(text).__name__}")
    try:  # a lone surrogate escape ("\ud800"): valid JSON, not Unicode
        return valid_string(text, f"{where}: field '{field}'", errors, "text.utf8_errors")
    except ValueError as e:
        raise XinslmError(str(e)) from None


def parquet_texts(path: Path, field: str, errors: str) -> Iterator[str]:
    """The `field` column of a Parquet file, a batch of rows at a time (one row group in
    memory at most); a bad value is an error naming file and row (counted from 1)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise XinslmError(f"{path}: not a Parquet file ({e})") from None
    with parquet:
        schema = parquet.schema_arrow
        if field not in schema.names:
            raise XinslmError(
                f"{path}: no column '{field}' (columns: {', '.join(schema.names)}); set "
                "text.field to the column that holds the text"
            )
        kind = schema.field(field).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or _binary(kind)):
            raise XinslmError(f"{path}: column '{field}' holds {kind}, not text")
        row = 0
        for batch in _batches(parquet, path, field):
            # As bytes, decoded here: a string column need not hold valid UTF-8.
            for value in batch.column(0).cast(pa.large_binary()).to_pylist():
                row += 1
                yield _decode_value(value, f"{path}: row {row}", field, errors)


def _binary(kind: object) -> bool:
    import pyarrow as pa

    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind)


def _batches(parquet: object, path: Path, field: str) -> Iterator:
    import pyarrow as pa

    try:
        yield from parquet.iter_batches(batch_size=PARQUET_BATCH, columns=[field])
    except (pa.ArrowException, OSError) as e:
        raise XinslmError(f"{path}: cannot read Parquet ({e})") from None


def _decode_value(value: bytes | None, where: str, field: str, errors: str) -> str:
    if value is None:
        raise XinslmError(f"{where}: field '{field}' is null")
    try:
        return codecs.decode(value, "utf-8", errors)
    except UnicodeDecodeError as e:
        raise XinslmError(
            f"{where}: field '{field}' is not valid UTF-8 ({e.reason} at byte {e.start}); "
            f"{REPLACE_HINT}"
        ) from None
