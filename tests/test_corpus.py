"""A sharded corpus (xinslm.corpus, xinslm.tokenize_text): .txt, .jsonl and .parquet shards give
the same ids for the same text; each document goes whole to train or val by a hash of its text;
a rerun tokenizes exactly the shards that changed; bad records fail naming file and line or
row, leaving nothing behind."""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import dot_entries, token_ids, tokenize

from xinslm.errors import XinslmError
from xinslm.tokenizer import ByteTokenizer

BYTE = ByteTokenizer()
VAL = 0.3
LINE = "The keeper lit the lamp.\n"
DOCS = [
    f"Document {i}:\n{LINE * (i % 5 + 1)}"
    + ("Café, naïve, 東京 — ünïcode.\n" if i % 3 == 0 else "")
    + ("CRLF line\r\nand\n\n  an indented line after a blank one\n" if i % 4 == 1 else "")
    for i in range(30)
]
DOCS[7] = DOCS[3]  # the same text twice: both copies land in the same split
GROUPS = [DOCS[:4], DOCS[4:5], DOCS[5:17], DOCS[17:18], DOCS[18:]]  # 5 shards, uneven


def is_val(text: str, fraction: float = VAL) -> bool:
    """The rule, written out: the first 8 bytes of SHA-256 of the UTF-8 text, big-endian,
    below fraction * 2**64."""
    head = hashlib.sha256(text.encode("utf-8")).digest()[:8]
    return int.from_bytes(head, "big") < int(fraction * 2**64)


def expected_ids(tok, docs=DOCS, fraction=VAL) -> dict[str, list[int]]:
    out = {"train": [], "val": []}
    for doc in docs:
        out["val" if is_val(doc, fraction) else "train"] += [tok.bos_id, *tok.encode(doc)]
    return out


def write_txt(folder, groups=GROUPS):
    """One file per document, named in document order."""
    folder.mkdir()
    for i, doc in enumerate(d for group in groups for d in group):
        (folder / f"doc{i:03}.txt").write_bytes(doc.encode("utf-8"))
    return folder


def write_jsonl(folder, groups=GROUPS, field="text"):
    folder.mkdir()
    for i, group in enumerate(groups):
        lines = [json.dumps({"id": j, field: doc}) for j, doc in enumerate(group)]
        (folder / f"part-{i}.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def write_parquet(folder, groups=GROUPS, field="text"):
    """Each shard in row groups of 2 rows, read a batch at a time."""
    folder.mkdir()
    for i, group in enumerate(groups):
        table = pa.table({"id": list(range(len(group))), field: group})
        pq.write_table(table, folder / f"part-{i}.parquet", row_group_size=2)
    return folder


def streams(tokens_dir):
    return {split: token_ids(tokens_dir, split) for split in ("train", "val")}


def test_the_same_text_as_txt_jsonl_and_parquet_gives_the_same_ids(tmp_path, any_tokenizer):
    tok = any_tokenizer
    expected = expected_ids(tok)
    assert expected["train"] and expected["val"]  # the rule sent documents both ways
    assert is_val(DOCS[3]) == is_val(DOCS[7])
    for write in (write_txt, write_jsonl, write_parquet):
        name = write.__name__.removeprefix("write_")
        source = write(tmp_path / name)
        meta = tokenize(source, tok, tmp_path / f"tokens-{name}", val_fraction=VAL).meta
        assert streams(tmp_path / f"tokens-{name}") == expected, name
        assert meta["split"] == "document"
        assert sum(meta["documents"].values()) == len(DOCS)
    # A document read in many chunks (its hash taken over all of them) splits the same way.
    tokenize(tmp_path / "txt", tok, tmp_path / "chunked", val_fraction=VAL, chunk_bytes=64)
    assert streams(tmp_path / "chunked") == expected


def test_the_split_of_a_document_depends_on_its_text_alone(tmp_path):
    # Other shards, another order, other names: each document lands where its text says.
    shuffled = [DOCS[20:], DOCS[:3], DOCS[10:20], DOCS[3:10]]
    write_jsonl(tmp_path / "a", shuffled)
    tokenize(tmp_path / "a", BYTE, tmp_path / "tokens", val_fraction=VAL)
    assert streams(tmp_path / "tokens") == expected_ids(BYTE, [d for g in shuffled for d in g])


def test_a_folder_mixes_formats_in_the_sorted_order_of_their_paths(tmp_path):
    root = tmp_path / "mixed"
    (root / "b").mkdir(parents=True)
    write_jsonl(root / "b" / "j", [DOCS[10:14]])
    write_parquet(root / "a", [DOCS[:10]])
    write_txt(root / "c", [DOCS[14:16]])
    (root / "notes.md").write_text("not a shard\n")
    meta = tokenize(root, BYTE, tmp_path / "tokens", val_fraction=VAL).meta
    names = [s["source"] for s in meta["shards"]]
    assert names == ["a/part-0.parquet", "b/j/part-0.jsonl", "c/doc000.txt", "c/doc001.txt"]
    assert streams(tmp_path / "tokens") == expected_ids(BYTE, DOCS[:16])


def test_field_names_the_records_text_and_empty_records_are_counted(tmp_path):
    docs = ["first\n", "", "third\n"]
    write_jsonl(tmp_path / "j", [docs], field="content")
    write_parquet(tmp_path / "p", [docs], field="content")
    for name in ("j", "p"):
        out = tmp_path / f"tokens-{name}"
        meta = tokenize(tmp_path / name, BYTE, out, val_fraction=0.0, field="content").meta
        assert token_ids(out, "train") == [BYTE.bos_id, *b"first\n", BYTE.bos_id, *b"third\n"]
        assert meta["documents"] == {"train": 2, "val": 0} and meta["empty_documents"] == 1


# --- incremental --------------------------------------------------------------------------


def inodes(folder):
    return {p.name: p.stat().st_ino for p in folder.iterdir()}


def test_a_rerun_tokenizes_exactly_the_shards_that_changed(tmp_path):
    corpus = write_jsonl(tmp_path / "corpus")
    out, store = tmp_path / "tokens", tmp_path / "tokens-store"
    first = tokenize(corpus, BYTE, out, val_fraction=VAL)
    assert sorted(first.tokenized) == [f"part-{i}.jsonl" for i in range(5)]
    assert (first.reused, first.dropped) == ([], 0)

    again = tokenize(corpus, BYTE, out, val_fraction=VAL)
    assert (again.tokenized, len(again.reused), again.dropped) == ([], 5, 0)
    assert again.meta == first.meta
    # data/tokens holds hardlinks of the store's files: the same bytes on disk, once.
    linked = inodes(out / "shards")
    assert linked == {name: ino for name, ino in inodes(store).items() if name in linked}
    assert len(linked) == 10

    # One shard changed: that shard alone is tokenized, its old tokens dropped.
    write_jsonl_shard(corpus / "part-2.jsonl", DOCS[5:16] + ["a new document\n"])
    changed = tokenize(corpus, BYTE, out, val_fraction=VAL)
    assert (changed.tokenized, len(changed.reused), changed.dropped) == (["part-2.jsonl"], 4, 1)
    assert_as_from_scratch(corpus, out, tmp_path / "scratch-1")

    # One added: only it. One removed: nothing tokenized, its files gone.
    write_jsonl_shard(corpus / "part-5.jsonl", ["the sixth shard\n"])
    added = tokenize(corpus, BYTE, out, val_fraction=VAL)
    assert (added.tokenized, len(added.reused), added.dropped) == (["part-5.jsonl"], 5, 0)
    key = next(s["key"] for s in added.meta["shards"] if s["source"] == "part-0.jsonl")
    (corpus / "part-0.jsonl").unlink()
    removed = tokenize(corpus, BYTE, out, val_fraction=VAL)
    assert (removed.tokenized, len(removed.reused), removed.dropped) == ([], 5, 1)
    assert not [p for p in (*out.rglob(f"{key}*"), *store.glob(f"{key}*"))]
    assert_as_from_scratch(corpus, out, tmp_path / "scratch-2")

    # A setting that changes the ids is a new key for every shard.
    other = tokenize(corpus, BYTE, out, val_fraction=0.2)
    assert (len(other.tokenized), other.reused, other.dropped) == (5, [], 5)


def write_jsonl_shard(path, docs):
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))


def assert_as_from_scratch(corpus, out, scratch):
    """What the incremental runs left equals a first run's: meta and every file."""
    fresh = tokenize(corpus, BYTE, scratch, val_fraction=VAL)
    assert len(fresh.tokenized) == len(fresh.meta["shards"])
    assert (out / "meta.json").read_bytes() == (scratch / "meta.json").read_bytes()
    names = sorted(p.name for p in (out / "shards").iterdir())
    assert names == sorted(p.name for p in (scratch / "shards").iterdir())
    for name in names:
        assert (out / "shards" / name).read_bytes() == (scratch / "shards" / name).read_bytes()


def test_worker_processes_write_what_one_process_writes(tmp_path, gpt2):
    write_parquet(tmp_path / "corpus")
    one = tokenize(tmp_path / "corpus", gpt2, tmp_path / "one", val_fraction=VAL, workers=1)
    two = tokenize(tmp_path / "corpus", gpt2, tmp_path / "two", val_fraction=VAL, workers=2)
    assert len(two.tokenized) == 5 and two.meta == one.meta
    assert streams(tmp_path / "two") == streams(tmp_path / "one") == expected_ids(gpt2)


def test_a_failed_run_keeps_the_shards_it_finished(tmp_path):
    corpus = write_jsonl(tmp_path / "corpus")
    (corpus / "part-9.jsonl").write_text('{"text": 5}\n')  # smallest: tokenized last
    out = tmp_path / "tokens"
    with pytest.raises(XinslmError, match="part-9.jsonl:1: field 'text' must be a string"):
        tokenize(corpus, BYTE, out, val_fraction=VAL)
    assert not out.exists() and dot_entries(tmp_path / "tokens-store") == []
    (corpus / "part-9.jsonl").write_text('{"text": "fixed\\n"}\n')
    assert tokenize(corpus, BYTE, out, val_fraction=VAL).tokenized == ["part-9.jsonl"]


# --- bad input ----------------------------------------------------------------------------

HINT = "set text.utf8_errors: replace to read bad bytes as U+FFFD"
JSONL_CASES = {
    "not-json": (
        b'{"text": "a"\n',
        "s.jsonl:2: malformed JSON: Expecting ',' delimiter at column 13",
    ),
    "not-an-object": (b"[1, 2]\n", "s.jsonl:2: expected a JSON object, got list"),
    "no-field": (
        b'{"body": "a"}\n',
        "s.jsonl:2: missing field 'text' (text.field names the field that holds the text)",
    ),
    "not-a-string": (b'{"text": null}\n', "s.jsonl:2: field 'text' must be a string, got NoneType"),
    "not-utf8": (
        b'{"text": "caf\xe9"}\n',
        f"s.jsonl:2: not valid UTF-8 (invalid continuation byte at column 14); {HINT}",
    ),
    "lone-surrogate": (
        b'{"text": "a\\ud800"}\n',
        "s.jsonl:2: field 'text': lone surrogate \\ud800 (character 2) is not valid Unicode; "
        "set text.utf8_errors: replace to read it as U+FFFD",
    ),
}


@pytest.mark.parametrize("case", JSONL_CASES)
def test_a_bad_jsonl_record_names_file_and_line(tmp_path, case):
    line, message = JSONL_CASES[case]
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "s.jsonl").write_bytes(b'{"text": "good"}\n' + line)
    assert_refused(tmp_path, f"{tmp_path / 'c'}/{message}")


def parquet_file(values, kind=None):
    def write(path):
        pq.write_table(pa.table({"text": pa.array(values, kind or pa.string())}), path)

    return write


PARQUET_CASES = {
    "null": (parquet_file(["a", "b", None]), "s.parquet: row 3: field 'text' is null"),
    "no-column": (
        lambda path: pq.write_table(pa.table({"body": ["a"]}), path),
        "s.parquet: no column 'text' (columns: body); set text.field to the column that holds "
        "the text",
    ),
    "not-text": (
        parquet_file([1, 2], pa.int64()),
        "s.parquet: column 'text' holds int64, not text",
    ),
    "not-utf8": (
        parquet_file([b"ok", b"caf\xe9"], pa.binary()),
        f"s.parquet: row 2: field 'text' is not valid UTF-8 (unexpected end of data at byte 3); "
        f"{HINT}",
    ),
    "not-parquet": (
        lambda path: path.write_bytes(b"text, not Parquet\n"),
        "s.parquet: not a Parquet file (",
    ),
}


@pytest.mark.parametrize("case", PARQUET_CASES)
def test_a_bad_parquet_value_names_file_and_row(tmp_path, case):
    write, message = PARQUET_CASES[case]
    (tmp_path / "c").mkdir()
    write(tmp_path / "c" / "s.parquet")
    assert_refused(tmp_path, f"{tmp_path / 'c'}/{message}")


def assert_refused(tmp_path, message):
    out = tmp_path / "tokens"
    with pytest.raises(XinslmError) as refused:
        tokenize(tmp_path / "c", BYTE, out, val_fraction=0.0)
    assert str(refused.value).startswith(message), str(refused.value)
    assert not out.exists()
    assert dot_entries(tmp_path) == [] and dot_entries(tmp_path / "tokens-store") == []


def test_replace_reads_bad_bytes_and_lone_surrogates_as_u_fffd(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.jsonl").write_bytes(b'{"text": "caf\xe9 a\\ud800"}\n')
    parquet_file([b"caf\xe9"], pa.binary())(tmp_path / "c" / "b.parquet")
    tokenize(tmp_path / "c", BYTE, tmp_path / "tokens", val_fraction=0.0, utf8_errors="replace")
    text = bytes(i for i in token_ids(tmp_path / "tokens", "train") if i < 256).decode()
    assert text == "caf\ufffd a\ufffdcaf\ufffd"


def test_no_document_in_val_is_an_error_naming_the_count(tmp_path):
    docs = [d for d in DOCS if not is_val(d, 0.01)][:3]
    write_jsonl(tmp_path / "c", [docs])
    with pytest.raises(XinslmError) as refused:
        tokenize(tmp_path / "c", BYTE, tmp_path / "tokens", val_fraction=0.01)
    assert str(refused.value) == (
        f"{tmp_path / 'c'}: none of its 3 documents fell in val (each goes there whole, with "
        "probability text.val_fraction = 0.01, by a hash of its text): add documents, raise "
        "text.val_fraction, or point text.input at one text file to split it by position"
    )
    assert not (tmp_path / "tokens").exists()


def test_a_lone_jsonl_or_parquet_file_is_a_corpus_of_records(tmp_path):
    write_parquet(tmp_path / "p", [DOCS])
    path = tmp_path / "p" / "part-0.parquet"
    meta = tokenize(path, BYTE, tmp_path / "tokens", val_fraction=VAL).meta
    assert meta["split"] == "document" and meta["shards"][0]["source"] == "part-0.parquet"
    assert streams(tmp_path / "tokens") == expected_ids(BYTE)
