"""tokenize-text: the shards of `text.input` -> data/tokens, each shard's token ids per split
(`shards/<key>.train.bin`, `shards/<key>.val.bin`) and a meta.json listing the shards in order.

Each document starts with BOS and keeps every byte of its text, newlines included; a split's
token stream is its shards' arrays one after another. `token_bytes.bin` holds the UTF-8 bytes
each id stands for (bits per byte divide by them).

Incremental: a shard's tokens are kept in a store beside data/tokens (data/token-store, outside
DVC's outputs, as checkpoints/resume is) under a key that hashes all they depend on: the
shard's bytes and format, the tokenizer, the text params that change ids (val_fraction, field,
utf8_errors) and the code that makes them. A run tokenizes only the shards whose key the store
lacks, hardlinks the store's files into the new data/tokens (no copy) and drops the keys no
shard uses any more: data/tokens comes out the same whatever the store held.

Shards are tokenized in parallel processes (`text.workers`); a file is read in bounded chunks
(xinslm.text), so memory stays flat on a shard of many GB.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from xinslm import artifact, corpus, text, tokenizer
from xinslm.artifact import ArrayWriter, file_sha256, token_dtype, write_meta
from xinslm.atomic import atomic_dir
from xinslm.config import TextParams
from xinslm.corpus import Reading, Shard, documents, find_shards
from xinslm.errors import XinslmError
from xinslm.tokenizer import Tokenizer

SPLITS = ("train", "val")
# The code a shard's ids come from: any edit to it makes every key new (tokenized again).
CODE_SHA256 = hashlib.sha256(
    b"".join(Path(m.__file__).read_bytes() for m in (artifact, corpus, text, tokenizer))
    + Path(__file__).read_bytes()
).hexdigest()


@dataclass
class Tokenized:
    meta: dict  # data/tokens/meta.json
    tokenized: list[str]  # the shards this run tokenized (their names under text.input)
    reused: list[str]  # the shards whose tokens the store already held
    dropped: int  # store entries no shard uses any more, removed


def tokenize_text(
    params: TextParams, tok: Tokenizer, out_dir: str | Path, store_dir: str | Path
) -> Tokenized:
    """Write the token artifact of params.input to out_dir, tokenizing only the shards whose
    tokens store_dir does not hold yet."""
    shards = find_shards(params.input)
    reading = Reading(params.val_fraction, params.field, params.utf8_errors, params.chunk_bytes)
    store = Path(store_dir)
    store.mkdir(parents=True, exist_ok=True)
    for partial in store.glob(".*.tmp"):  # left by a run that was killed
        partial.unlink()
    workers = params.workers or cpu_count()
    with ThreadPoolExecutor(workers) as threads:  # reading and hashing release the GIL
        digests = list(threads.map(file_sha256, [s.path for s in shards]))
    keys = [shard_key(d, s, reading, tok) for d, s in zip(digests, shards, strict=True)]
    todo = {k: s for k, s in zip(keys, shards, strict=True) if stored(store, k) is None}
    tokenize_shards(todo, reading, store, tok, workers)
    meta = _meta(params, tok, shards, keys, [stored(store, k) for k in keys])
    with atomic_dir(out_dir) as tmp:
        (tmp / "shards").mkdir()
        for key in dict.fromkeys(keys):
            for split in SPLITS:
                _link(store / f"{key}.{split}.bin", tmp / "shards" / f"{key}.{split}.bin")
        # The UTF-8 bytes each id stands for (0: special tokens), carried on through pack, so
        # that pretrain's val bpb and evaluate's read the same table.
        with ArrayWriter(tmp / "token_bytes.bin", np.uint32) as lengths:
            lengths.write(tok.token_byte_lengths())
            meta["arrays"] = {"token_bytes": lengths.close()}
        write_meta(tmp, meta)
    dropped = _drop_unused(store, set(keys))
    names = [s.name for s in todo.values()]
    done = set(names)
    reused = [s.name for s in shards if s.name not in done]
    return Tokenized(meta, names, reused, dropped)


def shard_key(sha256: str, shard: Shard, reading: Reading, tok: Tokenizer) -> str:
    """The store's name for a shard's tokens: a hash of everything its ids depend on."""
    records = shard.format in ("jsonl", "parquet")
    depends = {
        "sha256": sha256,
        "format": shard.format,
        "by_position": shard.by_position,
        "tokenizer": tok.identity(),
        "val_fraction": reading.val_fraction,
        "field": reading.field if records else None,
        "utf8_errors": reading.utf8_errors,
        "code": CODE_SHA256,
    }
    return hashlib.sha256(json.dumps(depends, sort_keys=True).encode()).hexdigest()[:32]


def stored(store: Path, key: str) -> dict | None:
    """The store's entry for `key` (its counts), or None unless it is whole: its meta written
    last and both arrays of the size it says."""
    path = store / f"{key}.json"
    if not path.is_file():
        return None
    entry = json.loads(path.read_text())
    for split in SPLITS:
        array = store / f"{key}.{split}.bin"
        size = entry["tokens"][split] * np.dtype(entry["dtype"]).itemsize
        if not array.is_file() or array.stat().st_size != size:
            return None
    return entry


def tokenize_shard(shard: Shard, key: str, reading: Reading, store: Path, tok: Tokenizer) -> str:
    """Tokenize one shard into the store: its arrays, then its entry (which marks it whole),
    each written under a temporary name and renamed."""
    dtype = token_dtype(tok.vocab_size)
    parts = {s: store / f".{key}.{s}.{os.getpid()}.tmp" for s in (*SPLITS, "json")}
    try:
        with ArrayWriter(parts["train"], dtype) as train, ArrayWriter(parts["val"], dtype) as val:
            counts = _write_documents(shard, reading, tok, {"train": train, "val": val})
            tokens = {"train": train.close()["shape"][0], "val": val.close()["shape"][0]}
        if shard.by_position and not any(counts["documents"].values()):
            raise XinslmError(f"{shard.path}: file is empty")
        entry = {"dtype": dtype.name, "tokens": tokens, **counts}
        parts["json"].write_text(json.dumps(entry) + "\n")
        for split in SPLITS:
            os.replace(parts[split], store / f"{key}.{split}.bin")
        os.replace(parts["json"], store / f"{key}.json")
    finally:
        for part in parts.values():
            part.unlink(missing_ok=True)
    return key


def _write_documents(shard: Shard, reading: Reading, tok: Tokenizer, writers: dict) -> dict:
    """Each document of the shard, BOS first, to its split's writer; the counts per split."""
    docs, text_bytes, empty = dict.fromkeys(SPLITS, 0), dict.fromkeys(SPLITS, 0), 0
    for split, pieces in documents(shard, reading):
        started = False
        for piece in filter(None, pieces):  # a record's "" is no document
            if not started:
                writers[split].write([tok.bos_id])
                started = True
            writers[split].write(tok.encode_array(piece))
            text_bytes[split] += len(piece.encode("utf-8"))
        docs[split] += started
        empty += not started
    return {"documents": docs, "text_bytes": text_bytes, "empty_documents": empty}


def _meta(params: TextParams, tok: Tokenizer, shards: list, keys: list, entries: list) -> dict:
    """meta.json of the artifact, once the totals are checked."""
    total = {
        what: {s: sum(e[what][s] for e in entries) for s in SPLITS}
        for what in ("tokens", "documents", "text_bytes")
    }
    by_position = shards[0].by_position
    docs = total["documents"]
    if not by_position and params.val_fraction > 0 and docs["val"] == 0:
        raise XinslmError(
            f"{params.input}: none of its {docs['train']:,} documents fell in val (each goes "
            f"there whole, with probability text.val_fraction = {params.val_fraction}, by a "
            "hash of its text): add documents, raise text.val_fraction, or point text.input "
            "at one text file to split it by position"
        )
    if total["tokens"]["train"] < 2:
        raise XinslmError(f"{params.input}: too little text to train on")
    text_tokens = {s: total["tokens"][s] - docs[s] for s in SPLITS}
    return {
        "kind": "tokens",
        "tokenizer": tok.identity(),
        "dtype": token_dtype(tok.vocab_size).name,
        "split": "position" if by_position else "document",
        "shards": [
            {"source": shard.name, "key": key, **{k: e[k] for k in ("tokens", "documents")}}
            for shard, key, e in zip(shards, keys, entries, strict=True)
        ],
        "tokens": total["tokens"],
        "text_bytes": total["text_bytes"],
        # Compression: UTF-8 bytes per token (BOS not counted); higher packs more text.
        "bytes_per_token": {
            s: round(total["text_bytes"][s] / text_tokens[s], 4) if text_tokens[s] else None
            for s in SPLITS
        },
        "documents": docs,
        "empty_documents": sum(e["empty_documents"] for e in entries),
        "val_fraction": params.val_fraction,
    }


def _link(source: Path, target: Path) -> None:
    """A hardlink: the same bytes on disk under both names (a copy across filesystems)."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _drop_unused(store: Path, keys: set[str]) -> int:
    """Remove the store's entries of keys not in `keys`; how many."""
    unused = {p.name.split(".")[0] for p in store.iterdir() if not p.name.startswith(".")} - keys
    for key in unused:
        for name in (f"{key}.json", *(f"{key}.{s}.bin" for s in SPLITS)):
            (store / name).unlink(missing_ok=True)
    return len(unused)


def tokenize_shards(
    todo: dict[str, Shard], reading: Reading, store: Path, tok: Tokenizer, workers: int
) -> None:
    """Tokenize each shard of todo (key: shard) into the store, the largest first, with a
    progress bar over their bytes: in `workers` processes at most, one per shard, each with an
    equal share of the CPUs for the threads of its encodes; one shard here, on all of them.
    The first error stops the rest."""
    order = sorted(todo.items(), key=lambda item: -item[1].path.stat().st_size)
    total = sum(s.path.stat().st_size for s in todo.values())
    processes = min(workers, len(todo))
    with tqdm(total=total, unit="B", unit_scale=True, desc="tokenize-text", disable=None) as bar:
        if processes <= 1:
            for key, shard in order:
                tokenize_shard(shard, key, reading, store, tok)
                bar.update(shard.path.stat().st_size)
            return
        # Spawned, not forked: no lock a thread of this process holds is copied half-held.
        threads = max(1, cpu_count() // processes)
        pool = ProcessPoolExecutor(processes, get_context("spawn"), _start_worker, (tok, threads))
        try:
            futures = {pool.submit(_in_worker, s, k, reading, store): s for k, s in order}
            for future in as_completed(futures):
                future.result()  # raises the shard's error here
                bar.update(futures[future].path.stat().st_size)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def cpu_count() -> int:
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


_worker_tok: Tokenizer | None = None  # a worker process's tokenizer (_start_worker)


def _start_worker(tok: Tokenizer, threads: int) -> None:
    global _worker_tok
    _worker_tok = tok
    tokenizer.ENCODE_THREADS = threads


def _in_worker(shard: Shard, key: str, reading: Reading, store: Path) -> str:
    return tokenize_shard(shard, key, reading, store, _worker_tok)
