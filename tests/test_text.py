import json
import re

import numpy as np
import pytest
from conftest import dot_entries, token_ids, tokenize

from xinslm.artifact import ArrayWriter, open_array, read_meta, token_dtype, write_meta
from xinslm.atomic import atomic_dir, atomic_file
from xinslm.blocks import open_blocks, shard_list
from xinslm.errors import XinslmError
from xinslm.pack import pack_blocks
from xinslm.text import LOOK_AHEAD, piece_end, read_text_chunks, safe_cut, split_at_lines
from xinslm.tokenizer import ByteTokenizer

BYTE = ByteTokenizer()
BOS = 256
CHUNK = 4 << 20  # params.yaml's text.chunk_bytes


def arrays(out):
    read_meta(out, "tokens", BYTE.identity())
    return token_ids(out, "train"), token_ids(out, "val")


# --- tokenize_text -----------------------------------------------------------------------


def test_tokenize_text_splits_at_the_next_line_start(tmp_path):
    text = "ab\ncd\nef\ngh\n"  # 12 bytes; val_fraction 0.4 puts the split at byte 8, inside "ef\n"
    src = tmp_path / "input.txt"
    src.write_text(text)
    out = tmp_path / "tokens"
    tokenize(src, BYTE, out, val_fraction=0.4)
    train, val = arrays(out)
    assert train == [BOS, *b"ab\ncd\nef\n"]
    assert val == [BOS, *b"gh\n"]
    assert BYTE.decode(train[1:]) + BYTE.decode(val[1:]) == text
    meta = json.loads((out / "meta.json").read_text())
    assert meta["kind"] == "tokens"
    assert meta["split"] == "position"
    assert meta["text_bytes"] == {"train": 9, "val": 3}
    assert meta["documents"] == {"train": 1, "val": 1}
    assert meta["tokens"] == {"train": 10, "val": 4}
    assert meta["dtype"] == "uint16"
    (shard,) = meta["shards"]
    assert shard["source"] == "input.txt" and shard["tokens"] == {"train": 10, "val": 4}
    assert meta["tokenizer"] == {"name": "byte", "vocab_size": 265, "special": BYTE.special}
    assert dot_entries(tmp_path) == []


def test_tiny_chunks_give_the_same_tokens(tmp_path):
    text = "first\n" + "a long line with é and 日本, é日本é, longer than chunks\n" + "x\nlast"
    src = tmp_path / "input.txt"
    src.write_text(text)
    whole = tokenize(src, BYTE, tmp_path / "whole", val_fraction=0.2, chunk_bytes=CHUNK)
    chunked = tokenize(src, BYTE, tmp_path / "chunked", val_fraction=0.2, chunk_bytes=7)
    assert arrays(tmp_path / "chunked") == arrays(tmp_path / "whole")
    assert chunked.meta == whole.meta
    train, val = arrays(tmp_path / "whole")
    assert BYTE.decode(val) == "<|bos|>x\nlast"
    assert BYTE.decode(train[1:]) + BYTE.decode(val[1:]) == text


def test_chunked_tokenize_text_is_encode_of_each_split_whole(tmp_path, tiktoken_tok):
    tok = tiktoken_tok
    text = (
        "ROMEO:\nBut soft, what light\n\n  through yonder\r\nwindow breaks?\n\n\n"
        "It is the east, and Juliet is the sun!\n日本語 テキスト\n\u3000全角\n"
    ) * 40
    data = text.encode("utf-8")
    src = tmp_path / "input.txt"
    src.write_bytes(data)
    out = tmp_path / "tokens"
    tokenize(src, tok, out, val_fraction=0.25, chunk_bytes=50)
    read_meta(out, "tokens", tok.identity())
    val_start = data.index(b"\n", len(data) - int(len(data) * 0.25) - 1) + 1
    train_text, val_text = data[:val_start].decode(), data[val_start:].decode()
    assert token_ids(out, "train") == [tok.bos_id, *tok.encode(train_text)]
    assert token_ids(out, "val") == [tok.bos_id, *tok.encode(val_text)]


def test_directory_input_is_one_document_per_txt_file(tmp_path):
    src = tmp_path / "corpus"
    src.mkdir()
    (src / "b.txt").write_text("bee\n")
    (src / "a.txt").write_text("ay\n")
    (src / "notes.md").write_text("ignored\n")
    meta = tokenize(src, BYTE, tmp_path / "tokens", val_fraction=0.0).meta
    train, val = arrays(tmp_path / "tokens")
    assert train == [BOS, *b"ay\n", BOS, *b"bee\n"]
    assert val == []
    assert meta["documents"] == {"train": 2, "val": 0}
    assert meta["split"] == "document"
    assert [s["source"] for s in meta["shards"]] == ["a.txt", "b.txt"]


def _empty_file(tmp_path):
    (tmp_path / "in.txt").write_text("")
    return tmp_path / "in.txt", f"{tmp_path / 'in.txt'}: file is empty"


def _missing(tmp_path):
    return tmp_path / "in.txt", f"{tmp_path / 'in.txt'}: text input not found"


def _no_txt(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.md").write_text("text\n")
    return tmp_path / "in", f"{tmp_path / 'in'}: directory holds no .txt, .jsonl or .parquet files"


def _bad_utf8(tmp_path):
    (tmp_path / "in.txt").write_bytes(b"hello\nwor\xffld\n")
    return tmp_path / "in.txt", f"{tmp_path / 'in.txt'}: not valid UTF-8 at byte 9 ("


@pytest.mark.parametrize("make", [_empty_file, _missing, _no_txt, _bad_utf8])
def test_tokenize_text_errors_leave_no_output(tmp_path, make):
    src, problem = make(tmp_path)
    out = tmp_path / "tokens"
    with pytest.raises(XinslmError, match=re.escape(problem)):
        tokenize(src, BYTE, out, val_fraction=0.1)
    assert not out.exists()
    assert dot_entries(tmp_path) == []
    store = tmp_path / "tokens-store"
    assert not store.exists() or dot_entries(store) == []  # no partial shard either


def test_bad_utf8_offset_across_a_chunk_boundary(tmp_path):
    src = tmp_path / "in.txt"
    src.write_bytes(b"abcdef\xc3Axxxxxxx\n")  # byte 6 starts a 2-byte sequence 'A' cannot end
    with pytest.raises(XinslmError, match=re.escape(f"{src}: not valid UTF-8 at byte 6 (")):
        tokenize(src, BYTE, tmp_path / "tokens", val_fraction=0.0, chunk_bytes=7)


# --- cutting text ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ab\ncd", 3),
        ("ab\n cd", -1),  # whitespace after the newline
        ("ab \ncd", -1),  # whitespace before it
        ("ab\n\ncd", -1),
        ("ab\r\ncd", -1),
        ("ab\n\u3000x", -1),  # Unicode whitespace counts too
        ("日本\n語", 3),
        ("ab\n", -1),  # nothing follows the newline yet
        ("ab\nc\n", 3),
        ("\ncd", -1),  # nothing before it
        ("ab\n!\n\tx", 3),
    ],
)
def test_safe_cut(text, expected):
    assert safe_cut(text, 0, len(text)) == expected


def test_safe_cut_stays_inside_start_and_end():
    text = "ab\ncd\nef\ngh"
    assert safe_cut(text, 0, len(text)) == 9  # the last one
    assert safe_cut(text, 0, 9) == 6  # a newline at end - 1 has no next character inside
    assert safe_cut(text, 0, 10) == 9
    assert safe_cut(text, 6, len(text)) == 9
    assert safe_cut(text, 8, len(text)) == -1  # the newline at start is not after it


def test_piece_end_cases():
    assert LOOK_AHEAD == 8
    # The last safe cut within size (the one at 3 is not the last).
    assert piece_end("ab\ncd\nefgh\nij", 0, 7) == 6
    assert piece_end("ab\ncd\nef\ngh", 3, 6) == 9  # counted from start
    # None within size, but one within LOOK_AHEAD sizes: a longer piece.
    assert piece_end("abcdefgh\nij", 0, 4) == 9
    assert piece_end("abcdefgh\nij", 0, 4, more_follows=True) == 9
    # More text follows and the short rest (< 8 sizes) has no safe cut: read more first.
    assert piece_end("abcdefgh", 0, 4, more_follows=True) is None
    assert piece_end("ab\n\ncd", 0, 2, more_follows=True) is None
    assert piece_end("x" * 100, 50, 8, more_follows=True) is None  # 50 left < 64
    # ... while a short rest that does hold one is cut there.
    assert piece_end("ab\ncd", 0, 5, more_follows=True) == 3
    # No safe cut within 8 sizes: the last newline within size, else one long line cut at size.
    assert piece_end("a\n\n" + "x" * 40, 0, 4) == 3
    assert piece_end("x" * 100, 0, 8) == 8
    assert piece_end("x" * 100, 0, 8, more_follows=True) == 8  # 100 >= 64 read: no waiting
    assert piece_end("x" * 100, 96, 8) == 100  # the rest is at most size: all of it
    # Without more_follows a rest of at most size is one piece, safe cuts in it or not.
    assert piece_end("ab\ncd", 0, 5) == 5
    assert piece_end("ab\ncd\nef", 3, 10) == 8
    assert piece_end("ab\ncd\nef", 3, 5) == 8


def test_split_at_lines_cuts_after_newlines():
    text = "ab\ncd\n" + "x" * 12 + "\nend"
    pieces = split_at_lines(text, 8)
    assert "".join(pieces) == text
    assert pieces == ["ab\ncd\n", "x" * 12 + "\n", "end"]  # a longer piece, cut safely
    assert split_at_lines("ab\n" + "x" * 80, 8) == ["ab\n", *["x" * 8] * 10]  # one long line
    # Looking ahead for a safe cut may reach the end of the text, which ends in a newline.
    assert split_at_lines("a b c d\n  e\n", 4) == ["a b ", "c d\n", "  e\n"]
    assert split_at_lines("", 4) == []


def test_split_at_lines_prefers_a_newline_before_visible_text():
    # "\n\n" and "\n  " are whitespace runs a pre-split pattern may split differently at the
    # end of a piece, so the cut goes after the newline between "a" and "b", although later
    # newlines are in reach.
    assert split_at_lines("a\nb\n\n  c", 6) == ["a\n", "b\n\n  c"]
    assert split_at_lines("a\n\nbc", 4) == ["a\n\n", "bc"]  # none safe: the last newline


def chunks(tmp_path, text, chunk_bytes, val_fraction=0.0):
    path = tmp_path / "in.txt"
    path.write_text(text)
    return list(read_text_chunks(path, val_fraction, chunk_bytes))


def test_read_text_chunks_cuts_at_piece_end(tmp_path):
    # Each chunk ends at a safe cut; a short rest is carried on to the next read.
    assert chunks(tmp_path, "aaaa\nbbbb\ncccc\ndd\n", 6) == [
        ("train", "aaaa\n"),
        ("train", "bbbb\n"),
        ("train", "cccc\n"),
        ("train", "dd\n"),
    ]
    # A whitespace-adjacent newline is no place to cut while a safe one is in reach.
    assert chunks(tmp_path, "one\ntwo\n\nthree\nfour\n", 5) == [
        ("train", "one\n"),
        ("train", "two\n\nthree\n"),
        ("train", "four\n"),
    ]
    # No safe cut within 8 chunks: the last newline, then pieces of one long line, as
    # split_at_lines cuts the whole text.
    text = "a\n\n" + "x" * 40 + "\nz"
    assert [t for _, t in chunks(tmp_path, text, 4)] == split_at_lines(text, 4)
    assert split_at_lines(text, 4) == ["a\n\n", "xxxx", "xxxx", "xxxx", "x" * 28 + "\n", "z"]
    # Each split is cut on its own: the val split starts at its line start.
    assert chunks(tmp_path, "ab\ncd\nef\ngh\n", 4, val_fraction=0.4) == [
        ("train", "ab\n"),
        ("train", "cd\n"),
        ("train", "ef\n"),
        ("val", "gh\n"),
    ]


def test_read_text_chunks_waits_for_the_character_after_the_look_ahead(tmp_path):
    text = "x" * (LOOK_AHEAD * 4 - 1) + "\ny\n"
    assert split_at_lines(text, 4) == ["x" * 31 + "\n", "y\n"]
    assert [t for _, t in chunks(tmp_path, text, 4)] == ["x" * 31 + "\n", "y\n"]


# --- token arrays ------------------------------------------------------------------------


def test_token_dtype():
    assert token_dtype(261) == np.uint16
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32


@pytest.mark.parametrize(
    "dtype, values", [("uint16", [0, 1, 65534, 65535]), ("uint32", [0, 65536, 100_000, 2**32 - 1])]
)
def test_array_round_trip(tmp_path, dtype, values):
    writer = ArrayWriter(tmp_path / "a.bin", np.dtype(dtype))
    writer.write(values[:2])
    writer.write(np.asarray(values[2:], dtype=np.int64))
    meta = {"arrays": {"a": writer.close()}}
    assert meta["arrays"]["a"] == {"file": "a.bin", "dtype": dtype, "shape": [4]}
    back = open_array(tmp_path, meta, "a")
    assert back.dtype == np.dtype(dtype)
    assert back.tolist() == values


def test_array_writer_refuses_out_of_range(tmp_path):
    writer = ArrayWriter(tmp_path / "a.bin", np.uint16)
    with pytest.raises(XinslmError, match=re.escape("a.bin: value out of range for uint16")):
        writer.write([65536])
    writer.close()


def test_open_array_refuses_wrong_size(tmp_path):
    writer = ArrayWriter(tmp_path / "a.bin", np.uint16)
    writer.write([1, 2, 3])
    meta = {"arrays": {"a": {**writer.close(), "shape": [4]}}}
    with pytest.raises(XinslmError, match=re.escape(f"{tmp_path / 'a.bin'}: size does not match")):
        open_array(tmp_path, meta, "a")


def test_read_meta_refuses_wrong_kind(tmp_path):
    write_meta(tmp_path, {"kind": "blocks", "tokenizer": BYTE.identity()})
    with pytest.raises(XinslmError, match="holds 'blocks' artifacts, expected 'tokens'"):
        read_meta(tmp_path, "tokens")


def test_read_meta_refuses_another_tokenizer(tmp_path):
    write_meta(tmp_path, {"kind": "tokens", "tokenizer": BYTE.identity()})
    other = {**BYTE.identity(), "vocab_size": 266}
    with pytest.raises(XinslmError, match=re.escape("made with tokenizer vocab_size=265, but 266")):
        read_meta(tmp_path, "tokens", other)
    assert read_meta(tmp_path, "tokens", BYTE.identity())["kind"] == "tokens"


# --- pack_blocks -------------------------------------------------------------------------


def write_tokens(directory, train, val=()):
    """A token artifact of one shard holding these streams, laid out as tokenize-text's."""
    (directory / "shards").mkdir(parents=True)
    for split, values in (("train", train), ("val", val)):
        np.asarray(list(values), np.uint16).tofile(directory / "shards" / f"k.{split}.bin")
    writer = ArrayWriter(directory / "token_bytes.bin", np.uint32)
    writer.write(BYTE.token_byte_lengths())
    tokens = {"train": len(train), "val": len(val)}
    meta = {
        "kind": "tokens",
        "tokenizer": BYTE.identity(),
        "dtype": "uint16",
        "shards": [{"source": "a.txt", "key": "k", "tokens": tokens}],
        "tokens": tokens,
        "arrays": {"token_bytes": writer.close()},
    }
    write_meta(directory, {**meta, "text_bytes": tokens})


def test_pack_blocks_overlap_by_one_token(tmp_path):
    n, t = 23, 5
    stream = list(range(n))
    write_tokens(tmp_path / "tokens", stream, range(100, 107))
    meta = pack_blocks(tmp_path / "tokens", tmp_path / "blocks", context_len=t)
    blocks = open_blocks(tmp_path / "blocks", meta, "train")[:]
    assert blocks.shape == ((n - 1) // t, t + 1) == (4, 6)
    for i, block in enumerate(blocks.tolist()):
        assert block == stream[i * t : i * t + t + 1]
    assert (blocks[1:, 0] == blocks[:-1, -1]).all()
    assert sorted(blocks[:, 1:].ravel().tolist()) == list(range(1, 4 * t + 1))
    assert open_blocks(tmp_path / "blocks", meta, "val")[:].tolist() == [list(range(100, 106))]
    assert meta["stats"]["train"] == {"blocks": 4, "tokens_used": 21}
    assert meta["stats"]["val"] == {"blocks": 1, "tokens_used": 6}
    # No copy of the stream: the blocks are read from the tokens, which meta.json names.
    assert sorted(p.name for p in (tmp_path / "blocks").iterdir()) == [
        "meta.json",
        "token_bytes.bin",
    ]
    tokens_meta = read_meta(tmp_path / "tokens", "tokens")
    assert meta["tokens"] == {"dir": "../tokens", "shards": shard_list(tokens_meta)}


def test_pack_blocks_of_tokenized_text(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("hello world\n")
    tokenize(src, BYTE, tmp_path / "tokens", val_fraction=0.0)
    meta = pack_blocks(tmp_path / "tokens", tmp_path / "blocks", context_len=4)
    blocks = open_blocks(tmp_path / "blocks", meta, "train")[:].tolist()
    assert blocks == [[BOS, *b"hell"], [*b"lo wo"], [*b"orld\n"]]
    assert meta["tokenizer"] == BYTE.identity()
    # Each id's bytes come along from tokenize-text, for pretrain's and evaluate's bpb.
    lengths = open_array(tmp_path / "blocks", meta, "token_bytes").tolist()
    assert lengths == BYTE.token_byte_lengths() == [1] * 256 + [0] * len(BYTE.special)


def test_pack_blocks_too_short_stream(tmp_path):
    write_tokens(tmp_path / "tokens", range(5))
    out = tmp_path / "blocks"
    problem = f"{tmp_path / 'tokens'}: 5 train tokens make no block of context_len+1 = 6"
    with pytest.raises(XinslmError, match=re.escape(problem)):
        pack_blocks(tmp_path / "tokens", out, context_len=5)
    assert not out.exists()
    assert dot_entries(tmp_path) == []


# --- atomic writes -----------------------------------------------------------------------


def test_atomic_dir_replaces_the_whole_directory_and_clears_leftovers(tmp_path):
    out = tmp_path / "art"
    out.mkdir()
    (out / "old.bin").write_text("old")
    (tmp_path / ".art.x1.tmp").mkdir()  # left by a run that was killed mid-write
    (tmp_path / ".art.x2.old.tmp").mkdir()
    with atomic_dir(out) as tmp:
        (tmp / "new.bin").write_text("new")
        assert [p.name for p in out.iterdir()] == ["old.bin"]  # the old one until the end
    assert [p.name for p in out.iterdir()] == ["new.bin"]
    assert dot_entries(tmp_path) == []
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "half.bin").write_text("half")
        raise RuntimeError("killed")
    assert [p.name for p in out.iterdir()] == ["new.bin"]
    assert dot_entries(tmp_path) == []


def test_atomic_file_keeps_the_old_file_on_failure_and_clears_leftovers(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("old")
    (tmp_path / ".metrics.json.abc.tmp").write_text("half")  # a killed run's
    with pytest.raises(RuntimeError), atomic_file(path) as tmp:
        tmp.write_text("ne")
        raise RuntimeError("killed")
    assert path.read_text() == "old"
    with atomic_file(path) as tmp:
        tmp.write_text("new")
    assert path.read_text() == "new"
    assert dot_entries(tmp_path) == []
