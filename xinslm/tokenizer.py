"""Tokenizers: bytes, a BPE trained by train-tokenizer, or a named tiktoken encoding loaded
from a local file (no network).

Both append the chat template's special tokens past their ordinary ids. `encode()` treats all
text as ordinary text, so no input string can ever produce a special token: that is what keeps
user content from forging a role marker.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from xinslm.artifact import check_tokenizer
from xinslm.errors import XinslmError
from xinslm.text import split_at_lines

PIECE_CHARS = 1 << 16  # the least text per piece of a threaded encode
ENCODE_THREADS = os.cpu_count() or 1
BPE_DIR = "data/tokenizer"  # where the train-tokenizer stage writes a trained BPE
BPE_FILE = "bpe.tiktoken"

# The chat template's special tokens, in id order after the ordinary vocabulary: BOS, the
# role markers and end of turn, then the calculator tool's call and result delimiters.
SPECIAL_TOKENS = (
    "<|bos|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
    "<|calc_start|>",
    "<|calc_end|>",
    "<|result_start|>",
    "<|result_end|>",
)

_R50K_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
_CL100K_PAT = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
_O200K_PAT = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)

# name -> (ranks file, its sha256 as tiktoken checks it, split pattern, the encoding's own specials)
TIKTOKEN_ENCODINGS: dict[str, tuple[str, str, str, dict[str, int]]] = {
    "gpt2": (
        "r50k_base.tiktoken",
        "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
        _R50K_PAT,
        {"<|endoftext|>": 50256},
    ),
    "r50k_base": (
        "r50k_base.tiktoken",
        "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
        _R50K_PAT,
        {"<|endoftext|>": 50256},
    ),
    "p50k_base": (
        "p50k_base.tiktoken",
        "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069",
        _R50K_PAT,
        {"<|endoftext|>": 50256},
    ),
    "cl100k_base": (
        "cl100k_base.tiktoken",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        _CL100K_PAT,
        {
            "<|endoftext|>": 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
    ),
    "o200k_base": (
        "o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        _O200K_PAT,
        {"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
    ),
}


class Tokenizer:
    """What every tokenizer offers; `special` maps each SPECIAL_TOKENS name to its id."""

    name: str
    vocab_size: int
    special: dict[str, int]

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_array(self, text: str) -> np.ndarray:
        """encode() of a large text as an unsigned integer array (tokenize-text's fast path)."""
        return np.asarray(self.encode(text), dtype=np.uint32)

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    @property
    def bos_id(self) -> int:
        return self.special["<|bos|>"]

    @property
    def end_id(self) -> int:
        return self.special["<|end|>"]

    def token_byte_lengths(self) -> list[int]:
        """UTF-8 bytes each id stands for on its own; 0 for special tokens (they are no text)."""
        raise NotImplementedError

    def identity(self) -> dict:
        """What a token artifact or checkpoint records, so readers can refuse a mismatch."""
        return {"name": self.name, "vocab_size": self.vocab_size, "special": dict(self.special)}


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes are ids 0-255; the special tokens are 256 onwards."""

    def __init__(self) -> None:
        self.name = "byte"
        self.special = {tok: 256 + i for i, tok in enumerate(SPECIAL_TOKENS)}
        self._special_by_id = {i: tok for tok, i in self.special.items()}
        self.vocab_size = 256 + len(SPECIAL_TOKENS)

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_array(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    def token_byte_lengths(self) -> list[int]:
        return [1] * 256 + [0] * len(SPECIAL_TOKENS)

    def decode(self, ids: list[int]) -> str:
        out, buf = [], bytearray()
        for i in ids:
            if i < 256:
                buf.append(i)
                continue
            out.append(buf.decode("utf-8", errors="replace"))
            buf = bytearray()
            out.append(self._special_by_id.get(i, f"<|unk{i}|>"))
        out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)


class TiktokenTokenizer(Tokenizer):
    """A byte-level BPE run through tiktoken: a named encoding from its local ranks file
    (checked against its sha256), or a BPE trained by the train-tokenizer stage."""

    def __init__(
        self, name: str, path: Path, pattern: str, own_special: dict[str, int], fingerprint: str
    ) -> None:
        import tiktoken

        ranks = read_ranks(path)
        base = max([*ranks.values(), *own_special.values()]) + 1
        # Kept for the export to Hugging Face's tokenizer.json (export_tokenizer.py).
        self.ranks, self.pattern, self.own_special = ranks, pattern, dict(own_special)
        self.name = name
        self.fingerprint = fingerprint
        self.special = {tok: base + i for i, tok in enumerate(SPECIAL_TOKENS)}
        self.vocab_size = base + len(SPECIAL_TOKENS)
        self._special_ids = {*own_special.values(), *self.special.values()}
        self._pool: ThreadPoolExecutor | None = None  # encode_array's threads, made on first use
        self._enc = tiktoken.Encoding(
            name=f"xinslm-{name}",
            pat_str=pattern,
            mergeable_ranks=ranks,
            special_tokens={**own_special, **self.special},
        )

    @classmethod
    def named(cls, name: str, encodings_dir: str | Path) -> TiktokenTokenizer:
        """One of tiktoken's own encodings (TIKTOKEN_ENCODINGS), from a local file."""
        if name not in TIKTOKEN_ENCODINGS:
            known = ", ".join(sorted(TIKTOKEN_ENCODINGS))
            raise XinslmError(f"unknown tiktoken encoding '{name}' (known: {known})")
        filename, sha256, pattern, own_special = TIKTOKEN_ENCODINGS[name]
        path = Path(encodings_dir) / filename
        if not path.is_file():
            raise XinslmError(
                f"tokenizer '{name}' needs {path}: put {filename} (tiktoken's ranks file) there, "
                "or point tokenizer.encodings_dir at the folder that holds it"
            )
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != sha256:
            raise XinslmError(f"{path} has sha256 {digest}, expected {sha256} for '{name}'")
        return cls(name, path, pattern, own_special, fingerprint=sha256)

    @classmethod
    def trained(cls, directory: str | Path) -> TiktokenTokenizer:
        """The BPE that the train-tokenizer stage wrote to `directory`."""
        directory = Path(directory)
        meta_path, path = directory / "meta.json", directory / BPE_FILE
        if not path.is_file() or not meta_path.is_file():
            raise XinslmError(
                f"tokenizer 'bpe' needs {path}: run the train-tokenizer stage (dvc repro)"
            )
        meta = json.loads(meta_path.read_text())
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != meta.get("sha256"):
            raise XinslmError(f"{path}: does not match {meta_path} (sha256 {digest})")
        return cls("bpe", path, meta["pattern"], {}, fingerprint=digest)

    def __getstate__(self) -> dict:
        # Sent to tokenize-text's worker processes: everything but the thread pool.
        return {**self.__dict__, "_pool": None}

    def identity(self) -> dict:
        # The fingerprint tells two trained BPEs of the same size apart.
        return {**super().identity(), "fingerprint": self.fingerprint}

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def encode_array(self, text: str) -> np.ndarray:
        # The text is cut where no pre-split piece spans the cut (same ids as encoding it
        # whole) and the pieces are encoded on a thread each, straight into uint32 buffers:
        # tiktoken's Rust core releases the GIL and no Python int is made per token. A short
        # text (a record), or one thread (a tokenize-text worker), is encoded in one call.
        if len(text) <= PIECE_CHARS or ENCODE_THREADS == 1:
            return self._enc.encode_to_numpy(text, disallowed_special=())
        if self._pool is None:
            self._pool = ThreadPoolExecutor(ENCODE_THREADS, thread_name_prefix="encode")
        # Enough pieces to keep every thread busy (about four each), none too small to pay.
        size = max(PIECE_CHARS, len(text) // (4 * ENCODE_THREADS) + 1)
        pieces = split_at_lines(text, size)
        arrays = self._pool.map(
            lambda piece: self._enc.encode_to_numpy(piece, disallowed_special=()), pieces
        )
        return np.concatenate([np.zeros(0, np.uint32), *arrays])

    def decode(self, ids: list[int]) -> str:
        return self._enc.decode(ids)

    def token_byte_lengths(self) -> list[int]:
        lengths = []
        for i in range(self.vocab_size):
            if i in self._special_ids:
                lengths.append(0)
                continue
            try:
                lengths.append(len(self._enc.decode_single_token_bytes(i)))
            except KeyError:  # an id the encoding leaves unused
                lengths.append(0)
        return lengths


def read_ranks(path: Path) -> dict[bytes, int]:
    """A tiktoken ranks file: one `base64(token bytes) rank` per line.

    Read here rather than with tiktoken.load.load_tiktoken_bpe, which caches every file it
    reads in a temp folder keyed by the path's name: a retrained data/tokenizer/bpe.tiktoken
    would then load as the stale copy of an earlier one."""
    ranks = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def tokenizer_for(
    identity: dict, source: str | Path, encodings_dir: str | Path, bpe_dir: str | Path = BPE_DIR
) -> Tokenizer:
    """Load the tokenizer an artifact or checkpoint (`source`) was made with, and refuse one
    that no longer matches it (another trained BPE, say)."""
    tokenizer = get_tokenizer(identity["name"], encodings_dir, bpe_dir)
    check_tokenizer(source, identity, tokenizer.identity())
    return tokenizer


def get_tokenizer(
    name: str,
    encodings_dir: str | Path = "../shared/data/tiktoken",
    bpe_dir: str | Path = BPE_DIR,
) -> Tokenizer:
    """The tokenizer called `name`: 'byte', 'bpe' (trained by the train-tokenizer stage into
    bpe_dir) or a tiktoken encoding (gpt2, cl100k_base, ...) from encodings_dir."""
    if name == "byte":
        return ByteTokenizer()
    if name == "bpe":
        return TiktokenTokenizer.trained(bpe_dir)
    return TiktokenTokenizer.named(name, encodings_dir)
