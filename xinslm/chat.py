"""The chat template, record validation and `render_conversation_with_labels()`.

A conversation renders as

    <|bos|> then, for each message:  <|role|> "\n" {content} <|end|> "\n"

Role markers, BOS and end-of-turn are special tokens, which `Tokenizer.encode()` never yields,
so no content can forge them. The model learns exactly each assistant message's own tokens
and the <|end|> that closes it (so it learns when to stop); everything else is context.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from xinslm.errors import XinslmError
from xinslm.tokenizer import Tokenizer
from xinslm.tokens import ArrayWriter, atomic_dir, token_dtype, write_meta

ROLES = ("system", "user", "assistant")
IGNORE_INDEX = -100  # the label of a position with no learned target (as in xinslm.model)

Conversation = list[dict[str, str]]


def validate_record(record: object) -> Conversation:
    """Return the record's messages, or raise ValueError saying what is wrong with it.

    Rules: a JSON object with `messages`, a non-empty list of {role, content}; role is one of
    system/user/assistant; content is a string; system may only come first; after it, user and
    assistant alternate starting with user; at least one assistant message.
    """
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    if "messages" not in record:
        raise ValueError("missing field 'messages'")
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        raise ValueError("field 'messages' must be a non-empty list")
    previous = None
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ValueError(f"{where} must be an object with 'role' and 'content'")
        extra = set(m) - {"role", "content"}
        if extra:
            raise ValueError(f"{where} has unknown field '{sorted(extra)[0]}'")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise ValueError(f"{where}.role: {role!r} is not one of system, user, assistant")
        if not isinstance(content, str):
            raise ValueError(f"{where}.content must be a string, got {type(content).__name__}")
        if role == "system" and i != 0:
            raise ValueError(f"{where}.role: a system message may only come first")
        expected = "user" if previous in (None, "system", "assistant") else "assistant"
        if role != "system" and role != expected:
            raise ValueError(f"{where}.role: expected '{expected}' after {previous or 'start'}")
        previous = role
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("no assistant message: nothing to learn")
    return messages


def render_conversation(conversation: Conversation, tokenizer: Tokenizer) -> tuple[list, list]:
    """Token ids of the conversation, and a 0/1 flag per token: 1 where the model learns it."""
    newline = tokenizer.encode("\n")
    ids, learned = [tokenizer.bos_id], [0]
    for m in conversation:
        content = tokenizer.encode(m["content"])
        is_assistant = int(m["role"] == "assistant")
        head = [tokenizer.special[f"<|{m['role']}|>"], *newline]
        ids += head + content + [tokenizer.end_id] + newline
        learned += [0] * len(head) + [is_assistant] * (len(content) + 1) + [0] * len(newline)
    return ids, learned


def labels_from_flags(ids: list[int], learned: list[int]) -> list[int]:
    """labels[i] is the target for position i: ids[i+1] where that token is learned, else -100."""
    return [ids[i + 1] if learned[i + 1] else IGNORE_INDEX for i in range(len(ids) - 1)] + [
        IGNORE_INDEX
    ]


def render_conversation_with_labels(
    conversation: Conversation, tokenizer: Tokenizer, max_len: int | None = None
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of equal length; labels already shifted, -100 where not learned.

    With `max_len`, both are cut to the first `max_len` tokens (a hard cut; the render-chat
    stage instead drops whole trailing turns, see `fit_conversation`).
    """
    ids, learned = render_conversation(conversation, tokenizer)
    labels = labels_from_flags(ids, learned)
    if max_len is not None:
        ids, labels = ids[:max_len], labels[:max_len]
    return ids, labels


def fit_conversation(
    conversation: Conversation, tokenizer: Tokenizer, max_tokens: int
) -> tuple[list, list] | None:
    """Render the longest prefix of whole turns, ending on an assistant message, that fits
    `max_tokens`; None when not even the first exchange fits."""
    ends = [i for i, m in enumerate(conversation) if m["role"] == "assistant"]
    for end in reversed(ends):
        ids, learned = render_conversation(conversation[: end + 1], tokenizer)
        if len(ids) <= max_tokens:
            return ids, learned
    return None


def read_jsonl(path: str | Path) -> Iterator[tuple[int, object]]:
    """Yield (line number, parsed JSON or _BadLine) for each non-blank line.

    Each line is decoded on its own, so a bad byte is reported on its own line and the lines
    around it still parse. A UTF-8 BOM and CRLF line endings are accepted."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield lineno, _BadLine(f"not valid UTF-8 ({e.reason} at column {e.start + 1})")
                continue
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as e:
                yield lineno, _BadLine(f"malformed JSON: {e.msg} at column {e.colno}")


class _BadLine:
    """A line that could not be parsed, carried to the caller so it can fail or skip it."""

    def __init__(self, problem: str) -> None:
        self.problem = problem


def load_conversations(
    path: str | Path, on_error: str = "fail"
) -> tuple[list[Conversation], list[str]]:
    """Read and validate a chat JSONL file.

    Returns the valid conversations and, with on_error='skip', one 'file:line: problem' string
    per skipped record. With on_error='fail' the first bad record raises XinslmError naming
    file, line and problem.
    """
    path = Path(path)
    if not path.is_file():
        raise XinslmError(f"{path}: chat file not found (set chat.input in params.yaml)")
    conversations, skipped = [], []
    for lineno, record in read_jsonl(path):
        try:
            if isinstance(record, _BadLine):
                raise ValueError(record.problem)
            conversations.append(validate_record(record))
        except ValueError as e:
            problem = f"{path}:{lineno}: {e}"
            if on_error == "fail":
                raise XinslmError(
                    problem + " (set chat.on_error: skip to skip such records)"
                ) from None
            skipped.append(problem)
    if not conversations:
        raise XinslmError(f"{path}: no valid conversations")
    return conversations, skipped


def render_chat(
    input_path: str | Path,
    val_path: str | Path,
    tokenizer: Tokenizer,
    out_dir: str | Path,
    context_len: int,
    on_error: str = "fail",
    overlong: str = "truncate",
) -> dict:
    """Render the train and val chat JSONL files into token ids, learned-flags and offsets.

    Per split: `{split}_ids.bin` (token ids), `{split}_mask.bin` (uint8, 1 where the token is
    a learned target) and `{split}_offsets.bin` (int64, conversation i is
    ids[offsets[i]:offsets[i+1]]). A conversation longer than context_len is cut back to
    whole turns (overlong='truncate') or dropped ('drop'); the counts, and every skipped
    record, go into meta.json.
    """
    splits, skipped = {}, []
    for split, path in (("train", input_path), ("val", val_path)):
        splits[split], bad = load_conversations(path, on_error)
        skipped += bad
    dtype = token_dtype(tokenizer.vocab_size)
    counts = {"truncated": 0, "dropped": 0}
    arrays, sizes = {}, {}
    with atomic_dir(out_dir) as tmp:
        for split, convs in splits.items():
            ids_w = ArrayWriter(tmp / f"{split}_ids.bin", dtype)
            mask_w = ArrayWriter(tmp / f"{split}_mask.bin", np.uint8)
            offsets = [0]
            for conv in convs:
                ids, learned = render_conversation(conv, tokenizer)
                if len(ids) > context_len:
                    fitted = fit_conversation(conv, tokenizer, context_len)
                    if overlong == "drop" or fitted is None:
                        counts["dropped"] += 1
                        continue
                    counts["truncated"] += 1
                    ids, learned = fitted
                ids_w.write(ids)
                mask_w.write(learned)
                offsets.append(offsets[-1] + len(ids))
            off_w = ArrayWriter(tmp / f"{split}_offsets.bin", np.int64)
            off_w.write(offsets)
            for name, w in (("ids", ids_w), ("mask", mask_w), ("offsets", off_w)):
                arrays[f"{split}_{name}"] = w.close()
            sizes[split] = len(offsets) - 1
        if sizes["train"] == 0:
            raise XinslmError(
                f"{input_path}: every training conversation is longer than context_len "
                f"{context_len}; raise model.context_len"
            )
        meta = {
            "kind": "chat",
            "tokenizer": tokenizer.identity(),
            "arrays": arrays,
            "context_len": context_len,
            "conversations": sizes,
            "skipped": len(skipped),
            "skipped_records": skipped[:100],
            **counts,
            "sources": {"train": str(input_path), "val": str(val_path)},
        }
        write_meta(tmp, meta)
    return meta


def render_prompt(conversation: Conversation, tokenizer: Tokenizer) -> list[int]:
    """Token ids that ask the model for the next assistant message: the conversation so far
    (ending with a user message) followed by the assistant's role marker and newline."""
    ids, _ = render_conversation(conversation, tokenizer)
    return ids + [tokenizer.special["<|assistant|>"], *tokenizer.encode("\n")]
