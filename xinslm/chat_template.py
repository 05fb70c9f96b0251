"""The chat template: a conversation as token ids, with a flag on each token the model learns.

A conversation renders as

    <|bos|> then, for each message:  <|role|> "\n" {content} <|end|> "\n"

Role markers, BOS and end-of-turn are special tokens, which `Tokenizer.encode()` never yields,
so no content can forge them. The model learns exactly each assistant message's own tokens
and the <|end|> that closes it (so it learns when to stop); everything else is context, as is
an assistant message of weight 0 (OpenAI's fine-tuning weight; see chat_records.py).

Calculator calls: with `tool_calls` on, an assistant's `<<expr=result>>` annotation (GSM8K's
way of marking its arithmetic) renders as

    <|calc_start|> {expr} <|calc_end|> <|result_start|> {result} <|result_end|>

The call is learned (the model learns to ask); the result is not (the tool answers: at
generation the engine writes it, see tool_calls.py). `decode_reply` turns the tokens back
into the `<<expr=result>>` text.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for the annotations only: rendering needs no more than the objects given
    from xinslm.chat_records import Conversation
    from xinslm.tokenizer import Tokenizer

# <<expression=result>>: the expression runs to the last "=" (none inside the result).
ANNOTATION = re.compile(r"<<([^<>]*?)=([^<>=]*)>>")
# What each tool token reads as in a reply's text: <<expr=result>> again.
TOOL_TEXT = {
    "<|calc_start|>": "<<",
    "<|calc_end|>": "=",
    "<|result_start|>": "",
    "<|result_end|>": ">>",
}


def is_learned(message: dict) -> bool:
    """Does the model learn this message? An assistant's, unless its weight is 0."""
    return message["role"] == "assistant" and message.get("weight", 1) == 1


def render_conversation(
    conversation: Conversation, tokenizer: Tokenizer, tool_calls: bool = True
) -> tuple[list, list]:
    """Token ids of the conversation, and a 0/1 flag per token: 1 where the model learns it."""
    newline = tokenizer.encode("\n")
    ids, learned = [tokenizer.bos_id], [0]
    for m in conversation:
        learns = is_learned(m)
        if m["role"] == "assistant" and tool_calls:
            content, content_learned = render_tool_calls(m["content"], tokenizer)
            content_learned = [flag * learns for flag in content_learned]
        else:
            content = tokenizer.encode(m["content"])
            content_learned = [int(learns)] * len(content)
        head = [tokenizer.special[f"<|{m['role']}|>"], *newline]
        ids += head + content + [tokenizer.end_id] + newline
        learned += [0] * len(head) + content_learned + [int(learns)] + [0] * len(newline)
    return ids, learned


def render_tool_calls(content: str, tokenizer: Tokenizer) -> tuple[list, list]:
    """An assistant message's ids with each <<expr=result>> as a calculator call and its
    result, and the learned flags: everything but the result (and its delimiters)."""
    special = tokenizer.special
    ids, learned, start = [], [], 0
    for match in ANNOTATION.finditer(content):
        text = tokenizer.encode(content[start : match.start()])
        call = [special["<|calc_start|>"], *tokenizer.encode(match[1]), special["<|calc_end|>"]]
        result = [
            special["<|result_start|>"],
            *tokenizer.encode(match[2]),
            special["<|result_end|>"],
        ]
        ids += text + call + result
        learned += [1] * (len(text) + len(call)) + [0] * len(result)
        start = match.end()
    rest = tokenizer.encode(content[start:])
    return ids + rest, learned + [1] * len(rest)


def fit_conversation(
    conversation: Conversation, tokenizer: Tokenizer, max_tokens: int, tool_calls: bool = True
) -> tuple[list, list] | None:
    """Render the longest prefix of whole turns, ending on an assistant message, that fits
    `max_tokens`; None when not even the first exchange fits. The prefix ends on a learned
    message (an assistant's of weight 1): an unlearned one after it would teach nothing."""
    ends = [i for i, m in enumerate(conversation) if is_learned(m)]
    for end in reversed(ends):
        ids, learned = render_conversation(conversation[: end + 1], tokenizer, tool_calls)
        if len(ids) <= max_tokens:
            return ids, learned
    return None


def render_prompt(conversation: Conversation, tokenizer: Tokenizer) -> list[int]:
    """Token ids that ask the model for the next assistant message: the conversation so far
    (ending with a user message) followed by the assistant's role marker and newline."""
    ids, _ = render_conversation(conversation, tokenizer)
    return ids + [tokenizer.special["<|assistant|>"], *tokenizer.encode("\n")]


def decode_reply(tokenizer: Tokenizer, ids: list[int]) -> str:
    """A reply's text: ordinary tokens decoded, calculator calls and results shown as
    <<expr=result>>. Decoding a list in pieces gives the same text as decoding it whole
    (where no piece cuts a character)."""
    tool_text = {tokenizer.special[name]: text for name, text in TOOL_TEXT.items()}
    out, run = [], []
    for i in ids:
        if i in tool_text:
            out += [tokenizer.decode(run), tool_text[i]]
            run = []
        else:
            run.append(i)
    out.append(tokenizer.decode(run))
    return "".join(out)
