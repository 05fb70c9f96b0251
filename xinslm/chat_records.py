"""Chat JSONL: reading a file line by line and checking each record.

A record is `{"messages": [{"role", "content"}, ...]}`: roles system, user and assistant;
content a string (or OpenAI's list of text parts, joined); a system message only first; then
user and assistant alternate, starting with user; at least one assistant message that is
learned. A bad record is reported as `file:line: problem`.

OpenAI's fine-tuning format reads as it means or is refused, never half-read: a message's
`name` is ignored (the template has no place for it), an assistant's `weight` 0 or 1 says
whether the model learns it; tool calls (`tool_calls`, `function_call`, the `tool` and
`function` roles, a record's `tools` and `functions`) cannot be rendered and are refused by
name, as is any other message field. Other record fields (ids, metadata) are ignored, but a
record-level `system` is refused (it would be a system prompt silently dropped).

JSON may escape a lone surrogate (`"\\ud800"`): valid JSON, not valid Unicode. `utf8_errors`
'strict' refuses it naming the field, 'replace' reads it as U+FFFD (as it does bytes that are
not UTF-8).
"""

from __future__ import annotations

import json
from pathlib import Path

from xinslm.chat_template import is_learned
from xinslm.errors import XinslmError
from xinslm.text import BadLine, read_jsonl

ROLES = ("system", "user", "assistant")
MESSAGE_FIELDS = ("role", "content", "name", "weight")

# A message: role and content (strings), and "weight" (0 or 1) where the record gave one.
Conversation = list[dict]

# Fields of OpenAI's format that no rendering of ours could keep: refused, naming them.
CANNOT_RENDER = (
    "cannot be rendered by this chat template (its one tool is the calculator, written "
    "<<expr=result>> in an assistant's content)"
)
REFUSED_RECORD_FIELDS = {
    "tools": f"tool definitions {CANNOT_RENDER}",
    "functions": f"tool definitions {CANNOT_RENDER}",
    "system": "put the system prompt in messages[0], with role 'system'",
}
REFUSED_MESSAGE_FIELDS = {
    "tool_calls": f"tool calls {CANNOT_RENDER}",
    "function_call": f"tool calls {CANNOT_RENDER}",
}


def validate_record(record: object) -> Conversation:
    """Return the record's messages, or raise ValueError saying what is wrong with it.

    Rules: a JSON object with `messages`, a non-empty list of {role, content}; role is one of
    system/user/assistant; content is a string, or a list of text parts (joined); system may
    only come first; after it, user and assistant alternate starting with user; at least one
    assistant message, and one that is learned (weight 1). Each message comes back as
    {role, content}, with its weight where it had one (its name is dropped)."""
    conversation: Conversation = []
    for i, message in enumerate(_messages(record)):
        previous = conversation[-1]["role"] if conversation else None
        conversation.append(_check_message(message, i, previous))
    answers = [m for m in conversation if m["role"] == "assistant"]
    if not answers:
        raise ValueError("no assistant message: nothing to learn")
    if not any(is_learned(m) for m in answers):
        raise ValueError("every assistant message has weight 0: nothing to learn")
    return conversation


def _messages(record: object) -> list:
    """The record's `messages` list, once the record's own fields are checked."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    if "messages" not in record:
        raise ValueError("missing field 'messages'")
    for field, why in REFUSED_RECORD_FIELDS.items():
        if field in record:
            raise ValueError(f"field '{field}': {why}")
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        raise ValueError("field 'messages' must be a non-empty list")
    return messages


def _check_message(m: object, i: int, previous: str | None) -> dict:
    """Check messages[i], which follows a message of role `previous`; return it as
    {role, content} (and weight, where given)."""
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise ValueError(f"{where} must be an object with 'role' and 'content'")
    for field, why in REFUSED_MESSAGE_FIELDS.items():
        if field in m:
            raise ValueError(f"{where}.{field}: {why}")
    role = _role(m.get("role"), i, previous, where)
    extra = set(m) - set(MESSAGE_FIELDS)
    if extra:
        raise ValueError(f"{where} has unknown field '{sorted(extra)[0]}'")
    message = {"role": role, "content": _content(m.get("content"), where)}
    if "weight" in m:
        message["weight"] = _weight(m["weight"], role, where)
    return message


def _role(role: object, i: int, previous: str | None, where: str) -> str:
    if role in ("tool", "function"):
        raise ValueError(f"{where}.role: '{role}' messages (tool results) {CANNOT_RENDER}")
    if role not in ROLES:
        raise ValueError(f"{where}.role: {role!r} is not one of system, user, assistant")
    if role == "system" and i != 0:
        raise ValueError(f"{where}.role: a system message may only come first")
    expected = "user" if previous in (None, "system", "assistant") else "assistant"
    if role != "system" and role != expected:
        raise ValueError(f"{where}.role: expected '{expected}' after {previous or 'start'}")
    return role


def _weight(weight: object, role: str, where: str) -> int:
    """OpenAI's fine-tuning weight of an assistant message: 1 learned, 0 not."""
    if role != "assistant":
        raise ValueError(f"{where}.weight: only an assistant message has a weight")
    if type(weight) is not int or weight not in (0, 1):
        raise ValueError(
            f"{where}.weight: must be 0 (not learned) or 1 (learned), got {json.dumps(weight)[:40]}"
        )
    return weight


def _content(content: object, where: str) -> str:
    """A message's content: a string, or OpenAI's list of parts, each {"type": "text",
    "text": str}, joined."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ValueError(
            f"{where}.content must be a string or a list of text parts, "
            f"got {type(content).__name__}"
        )
    texts = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        if not isinstance(part, dict):
            raise ValueError(f"{at} must be an object with 'type' and 'text'")
        kind = part.get("type")
        if kind != "text":
            raise ValueError(
                f"{at}.type: {json.dumps(kind)[:40]} parts cannot be rendered (only 'text' parts)"
            )
        extra = set(part) - {"type", "text"}
        if extra:
            raise ValueError(f"{at} has unknown field '{sorted(extra)[0]}'")
        if not isinstance(part.get("text"), str):
            raise ValueError(f"{at}.text must be a string, got {type(part.get('text')).__name__}")
        texts.append(part["text"])
    return "".join(texts)


def load_conversations(
    path: str | Path, on_error: str = "fail", utf8_errors: str = "strict"
) -> tuple[list[Conversation], list[str]]:
    """Read and validate a chat JSONL file (utf8_errors as read_jsonl).

    Returns the valid conversations and, with on_error='skip', one 'file:line: problem' string
    per skipped record. With on_error='fail' the first bad record raises XinslmError naming
    file, line and problem.
    """
    path = Path(path)
    if not path.is_file():
        raise XinslmError(f"{path}: chat file not found (set chat.input in params.yaml)")
    conversations, skipped = [], []
    for lineno, record in read_jsonl(path, utf8_errors):
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
