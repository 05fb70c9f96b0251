"""Contamination: which training conversations hold a question an evaluation asks.

A text's fingerprints are 64-bit hashes of its normalized words (lowercase letters and
digits, and arithmetic signs; other characters only separate words): one of the whole text
(normalized exact match) and one of each run of 13 consecutive words (the overlap the GPT-3
paper measured). A training
conversation matches an item when a fingerprint of one of its user messages equals one of
the item's question. render-chat saves the training conversations' fingerprints in
data/chat (so evaluate-task can count matches without the chat files) and, with
chat.decontaminate naming task files, drops the conversations that match their items.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from xinslm.errors import XinslmError
from xinslm.text import BadLine, read_jsonl

NGRAM = 13

# Words are runs of lowercase letters and digits; arithmetic signs count as words of their own
# (so "1 + 1" and "1 - 1" differ); other punctuation and spacing do not count.
_WORD = re.compile(r"[a-z0-9]+|[-+*/=%^<>]")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _hash(kind: str, words: Iterable[str]) -> int:
    digest = hashlib.blake2b(f"{kind}:{' '.join(words)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # fits int64


def fingerprints(text: str) -> set[int]:
    """The hash of the whole normalized text, and of each of its 13-word runs."""
    w = words(text)
    found = {_hash("text", w)}
    found.update(_hash("ngram", w[i : i + NGRAM]) for i in range(len(w) - NGRAM + 1))
    return found


def conversation_fingerprints(conversation: list[dict]) -> set[int]:
    """The fingerprints of a conversation's user messages."""
    found: set[int] = set()
    for m in conversation:
        if m["role"] == "user":
            found |= fingerprints(m["content"])
    return found


def fingerprint_table(conversations: Iterable[set[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, conversation index) pairs of every conversation's fingerprints, as the
    int64 arrays render-chat saves."""
    hashes, owners = [], []
    for i, found in enumerate(conversations):
        hashes += sorted(found)
        owners += [i] * len(found)
    return np.array(hashes, dtype=np.int64), np.array(owners, dtype=np.int64)


def matching_conversations(
    hashes: np.ndarray, owners: np.ndarray, questions: Iterable[str]
) -> np.ndarray:
    """Indices of the conversations that share a fingerprint with any of the questions."""
    wanted = set()
    for question in questions:
        wanted |= fingerprints(question)
    hit = np.isin(hashes, np.fromiter(wanted, dtype=np.int64, count=len(wanted)))
    return np.unique(owners[hit])


def seen_questions(hashes: np.ndarray, questions: list[str]) -> list[bool]:
    """For each question: does a training conversation share one of its fingerprints?"""
    known = set(hashes.tolist())
    return [not known.isdisjoint(fingerprints(q)) for q in questions]


def task_questions(path: str | Path, utf8_errors: str = "strict") -> list[str]:
    """The questions of a task file of either kind: each record's `question`, or the last
    user message of its `messages`. A bad line is an error naming it (utf8_errors: as
    text.read_jsonl)."""
    path = Path(path)
    if not path.is_file():
        raise XinslmError(f"{path}: task file not found (chat.decontaminate)")
    questions = []
    for lineno, record in read_jsonl(path, utf8_errors):
        question = None
        if isinstance(record, dict) and isinstance(record.get("question"), str):
            question = record["question"]
        elif isinstance(record, dict) and isinstance(record.get("messages"), list):
            users = [
                m.get("content")
                for m in record["messages"]
                if isinstance(m, dict) and m.get("role") == "user"
            ]
            question = users[-1] if users and isinstance(users[-1], str) else None
        if question is None:
            problem = record.problem if isinstance(record, BadLine) else "no question"
            raise XinslmError(
                f"{path}:{lineno}: {problem} (a task item has a 'question' string, "
                "or 'messages' with a user message)"
            )
        questions.append(question)
    return questions
