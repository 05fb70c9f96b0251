"""Reading text files: decoded as UTF-8 in bounded chunks, split by position into train and val,
and cut only where a tokenizer gives the same ids in pieces as for the whole (which files and
records make the corpus: xinslm.corpus).

A lone text file is split by position, as nanoGPT splits Shakespeare: the first
(1 - val_fraction) of its bytes go to train, the rest (from the next line start) to val.
Pieces are cut where `safe_cut` allows, so text encoded piece by piece (tokenize-text's chunks
and threads) gives exactly the ids of the text encoded whole.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from xinslm.errors import XinslmError

LOOK_AHEAD = 8  # a piece may grow to this many times its size to end at a safe cut
# A JSON escape of a surrogate: only a line holding one can parse to a lone surrogate.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def not_utf8(text: str, from_bytes: bool = False) -> str | None:
    """Where `text` cannot be encoded as UTF-8: its first lone surrogate and the character it
    is, e.g. `lone surrogate \\ud800 (character 3)`; None when it encodes. from_bytes: the text
    was decoded with surrogateescape (argv, stdin), so U+DC80-U+DCFF name the byte they stand
    for (`byte 0xe9`). The one description for chat files, the CLI and the server."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError as e:
        code = ord(text[e.start])
        escaped = from_bytes and 0xDC80 <= code <= 0xDCFF
        what = f"byte 0x{code - 0xDC00:02x}" if escaped else f"lone surrogate \\u{code:04x}"
        return f"{what} (character {e.start + 1})"


def safe_cut(text: str, start: int, end: int) -> int:
    r"""The position in (start, end) just after the last newline with visible text on both
    sides ("x\ny"), or -1 if there is none.

    No piece of a byte-level BPE's pre-split pattern (gpt2, cl100k_base, o200k_base, ours)
    runs across such a newline, and the newline is a piece of its own (or ends a punctuation
    piece) whether or not text follows it, so text encoded in pieces cut there gives exactly
    the ids of the text encoded whole. A newline next to other whitespace is not safe: gpt2's
    `\s+(?!\S)` gives "\n\n" + "x" as "\n", "\n", "x" but "\n\n" at the end of a piece as one.
    """
    end = min(end, len(text))
    i = text.rfind("\n", start + 1, end - 1)
    while i > start:
        if not text[i - 1].isspace() and not text[i + 1].isspace():
            return i + 1
        i = text.rfind("\n", start + 1, i)
    return -1


def piece_end(text: str, start: int, size: int, more_follows: bool = False) -> int | None:
    """Where the piece of `text` that starts at `start`, about `size` characters long, ends:
    the last safe cut within `size`, else within LOOK_AHEAD sizes; failing that, None when
    `more_follows` (text not read yet) and the rest is shorter than LOOK_AHEAD sizes (read
    more first), else the last newline within `size`, else (one very long line) `size` on.
    Without `more_follows`, a rest of at most `size` is one piece."""
    end = start + size
    if end >= len(text) and not more_follows:
        return len(text)
    for limit in (end, start + LOOK_AHEAD * size):
        cut = safe_cut(text, start, limit + 1)
        if cut > 0:
            return cut
    if more_follows and len(text) - start <= LOOK_AHEAD * size:
        return None
    newline = text.rfind("\n", start, end) + 1
    return newline if newline > start else min(end, len(text))


def split_at_lines(text: str, size: int) -> list[str]:
    """`text` cut into pieces of about `size` characters at `piece_end`, so that encoding the
    pieces gives the ids of encoding the text whole."""
    pieces, start = [], 0
    while start < len(text):
        end = piece_end(text, start, size)
        pieces.append(text[start:end])
        start = end
    return pieces


def read_text_chunks(
    path: Path, val_fraction: float, chunk_bytes: int, utf8_errors: str = "strict"
) -> Iterator[tuple[str, str]]:
    """Yield (split, text) chunks of `path`, about chunk_bytes each, cut at `piece_end`,
    decoded as UTF-8: with utf8_errors 'strict' a bad byte is an error naming its offset, with
    'replace' it becomes U+FFFD. The val split starts at the first line start in the last
    val_fraction of the bytes."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        val_start = _line_start_from(f, size - int(size * val_fraction))
        for split, span in (("train", (0, val_start)), ("val", (val_start, size))):
            for text in _decoded_chunks(f, path, span, chunk_bytes, utf8_errors):
                yield split, text


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
    f: BinaryIO, path: Path, span: tuple[int, int], chunk_bytes: int, errors: str
) -> Iterator[str]:
    """The bytes span[0]:span[1] of `f`, decoded, in pieces cut at `piece_end`."""
    begin, end = span
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
        start = 0
        while start < len(text):
            cut = piece_end(text, start, chunk_bytes, more_follows=not last)
            if cut is None:
                break
            yield text[start:cut]
            start = cut
        carry = text[start:]


def read_jsonl(
    path: str | Path,
    utf8_errors: str = "strict",
    setting: str = "chat.utf8_errors",
    strings: bool = True,
) -> Iterator[tuple[int, object]]:
    """Yield (line number, parsed JSON or BadLine) for each non-blank line.

    Each line is decoded on its own, so a bad byte is reported on its own line and the lines
    around it still parse. A UTF-8 BOM and CRLF line endings are accepted. Bytes that are not
    UTF-8, and strings holding a lone surrogate (an escape such as "\\ud800"), are a BadLine
    naming where with utf8_errors 'strict', and read as U+FFFD with 'replace'. `setting` is
    the param a message tells to set; strings False leaves lone surrogates to the caller."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            try:
                line = raw.decode("utf-8", errors=utf8_errors)
            except UnicodeDecodeError as e:
                yield (
                    lineno,
                    BadLine(
                        f"not valid UTF-8 ({e.reason} at column {e.start + 1}); set "
                        f"{setting}: replace to read bad bytes as U+FFFD"
                    ),
                )
                continue
            if not line.strip():
                continue
            try:
                record = json.loads(line.rstrip("\r\n"))
                if strings and _SURROGATE_ESCAPE.search(line):
                    record = _valid_unicode(record, "", utf8_errors, setting)
            except json.JSONDecodeError as e:
                yield lineno, BadLine(f"malformed JSON: {e.msg} at column {e.colno}")
                continue
            except ValueError as e:
                yield lineno, BadLine(str(e))
                continue
            yield lineno, record


def _valid_unicode(value: object, where: str, errors: str, setting: str) -> object:
    """`value` (parsed JSON at `where`, a path such as messages[0].content) with the lone
    surrogates of its strings and field names read as U+FFFD (errors 'replace'), or the first
    one refused naming where it is ('strict': ValueError)."""
    if isinstance(value, str):
        return valid_string(value, where or "the line", errors, setting)
    if isinstance(value, list):
        return [_valid_unicode(v, f"{where}[{i}]", errors, setting) for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for key, v in value.items():
            name = f"{where or 'the record'}: field name {ascii(key)}"
            key = valid_string(key, name, errors, setting)
            out[key] = _valid_unicode(v, f"{where}.{key}" if where else key, errors, setting)
        return out
    return value


def valid_string(text: str, where: str, errors: str, setting: str) -> str:
    """`text` with its lone surrogates read as U+FFFD (errors 'replace'), or the first one
    refused naming `where` and the param to set ('strict': ValueError)."""
    problem = not_utf8(text)
    if problem is None:
        return text
    if errors == "replace":
        return _SURROGATE.sub("\ufffd", text)
    raise ValueError(
        f"{where}: {problem} is not valid Unicode; set {setting}: replace to read it as U+FFFD"
    )


class BadLine:
    """A line that could not be parsed, carried to the caller so it can fail or skip it."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
