"""The chat template: a conversation as token ids, with a flag on each token the model learns.

A conversation renders as

    <|bos|> then, for each message:  <|role|> "\n" {content} <|end|> "\n"

Role markers, BOS and end-of-turn are special tokens, which `Tokenizer.encode()` never yields,
so no content can forge them. The model learns exactly each assistant message's own tokens
and the <|end|> that closes it (so it learns when to stop); everything else is context.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for the annotations only: rendering needs no more than the objects given
    from xinslm.chat_records import Conversation
    from xinslm.tokenizer import Tokenizer


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


def render_prompt(conversation: Conversation, tokenizer: Tokenizer) -> list[int]:
    """Token ids that ask the model for the next assistant message: the conversation so far
    (ending with a user message) followed by the assistant's role marker and newline."""
    ids, _ = render_conversation(conversation, tokenizer)
    return ids + [tokenizer.special["<|assistant|>"], *tokenizer.encode("\n")]
