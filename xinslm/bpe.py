"""Train a byte-level BPE on the training text and save it in tiktoken's own format.

rustbpe (the trainer nanochat uses) learns the merges; the result is a tiktoken ranks file
(base64 token bytes and rank per line) plus a meta.json holding the split pattern, so every
later stage encodes and decodes through `tiktoken.Encoding` (see TiktokenTokenizer.trained).
Only the train split of the text is read, so the val text stays unseen.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

from xinslm.atomic import atomic_dir
from xinslm.config import TextParams
from xinslm.corpus import Reading, documents, find_shards
from xinslm.errors import XinslmError
from xinslm.tokenizer import BPE_FILE

# GPT-4's pre-split pattern (cl100k_base), as nanochat trains with: words, numbers in groups
# of up to three digits, punctuation runs, and whitespace.
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)


def training_text(text: TextParams, max_chars: int) -> Iterator[str]:
    """The train split of text.input's documents, in chunks, up to max_chars characters."""
    left = max_chars
    reading = Reading(text.val_fraction, text.field, text.utf8_errors, 1 << 20)
    for shard in find_shards(text.input):
        for split, pieces in documents(shard, reading):
            if split != "train":
                continue
            for piece in pieces:
                yield piece[:left]
                left -= min(left, len(piece))
                if left == 0:
                    return


def train_bpe(texts: Iterator[str], vocab_size: int, out_dir: str | Path) -> dict:
    """Learn `vocab_size` ordinary tokens (256 bytes + merges) and write them to out_dir."""
    import rustbpe

    if vocab_size < 257:
        raise XinslmError(f"tokenizer.vocab_size {vocab_size}: a BPE needs more than 256")
    trainer = rustbpe.Tokenizer()
    chars = 0

    def counted() -> Iterator[str]:
        nonlocal chars
        for text in texts:
            chars += len(text)
            yield text

    trainer.train_from_iterator(counted(), vocab_size, pattern=SPLIT_PATTERN)
    ranks = sorted(trainer.get_mergeable_ranks(), key=lambda item: item[1])
    if len(ranks) < vocab_size:
        raise XinslmError(
            f"the text has too few distinct pairs for {vocab_size} tokens "
            f"(got {len(ranks)}): lower tokenizer.vocab_size or add text"
        )
    lines = "".join(f"{base64.b64encode(bytes(tok)).decode()} {rank}\n" for tok, rank in ranks)
    with atomic_dir(out_dir) as tmp:
        (tmp / BPE_FILE).write_text(lines)
        meta = {
            "kind": "bpe",
            "vocab_size": vocab_size,
            "pattern": trainer.get_pattern(),
            "trained_on_chars": chars,
            "sha256": hashlib.sha256(lines.encode()).hexdigest(),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def write_unused(out_dir: str | Path, tokenizer_name: str) -> None:
    """With another tokenizer chosen, the stage's output says so and never changes, so the
    stages after it see no change either."""
    with atomic_dir(out_dir) as tmp:
        note = {"kind": "bpe", "used": False, "reason": "tokenizer.name is not bpe"}
        (tmp / "meta.json").write_text(json.dumps(note, indent=2) + "\n")
