"""Chat JSONL: reading a file line by line and checking each record.

A record is `{"messages": [{"role", "content"}, ...]}`: roles system, user and assistant;
content a string; a system message only first; then user and assistant alternate, starting
with user; at least one assistant message. A bad record is reported as `file:line: problem`.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from pathlib import Path

from xinslm.errors import XinslmError

ROLES = ("system", "user", "assistant")

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
    for i, message in enumerate(messages):
        previous = _check_message(message, i, previous)
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("no assistant message: nothing to learn")
    return messages


def _check_message(m: object, i: int, previous: str | None) -> str:
    """Check messages[i], which follows a message of role `previous`; return its role."""
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
    return role


def read_jsonl(path: str | Path) -> Iterator[tuple[int, object]]:
    """Yield (line number, parsed JSON or BadLine) for each non-blank line.

    Each line is decoded on its own, so a bad byte is reported on its own line and the lines
    around it still parse. A UTF-8 BOM and CRLF line endings are accepted."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield lineno, BadLine(f"not valid UTF-8 ({e.reason} at column {e.start + 1})")
                continue
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as e:
                yield lineno, BadLine(f"malformed JSON: {e.msg} at column {e.colno}")


class BadLine:
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
            if isinstance(record, BadLine):
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
