"""A reply's text as its tokens come: the part that is safe to show, and where a stop string
ends it.

Text is shown only once it is final:
- not while the decoded text ends with U+FFFD: the token boundary cut a multi-byte UTF-8
  character, whose other bytes come with the next token;
- never the end of it that could be the start of a stop string: if the stop string then
  completes, the reply ends before it, and that text must never have been shown.

The text is `shown_text`'s, the one decoding of a reply for a user (the CLI and the server):
calculator calls as <<expr=result>> (chat_template.decode_reply), bytes that are not UTF-8 as
U+FFFD, and no other special token (a stray <|bos|> or <|user|> of a weak model); `raw` keeps
every special token as its marker. Tokens are decoded once each: the text up to a clean
character boundary is kept, and only the tokens after it are decoded again at the next step.
"""

from __future__ import annotations

from collections.abc import Iterable

from xinslm.chat_template import TOOL_TEXT, decode_reply
from xinslm.tokenizer import Tokenizer


def shown_text(tokenizer: Tokenizer, ids: list[int], raw: bool = False) -> str:
    """The text of `ids` for a user: decode_reply's, without the special tokens that are not
    the calculator's (each ends the bytes before it, so none joins bytes across it); `raw`:
    every token as the tokenizer decodes it, special ones as their markers."""
    if raw:
        return tokenizer.decode(ids)
    # A tiktoken encoding's own specials (<|endoftext|>) too: a model may emit them.
    special = {*tokenizer.special.values(), *getattr(tokenizer, "own_special", {}).values()}
    hidden = special - {tokenizer.special[name] for name in TOOL_TEXT}
    pieces, run = [], []
    for i in ids:
        if i in hidden:
            pieces.append(decode_reply(tokenizer, run))
            run = []
        else:
            run.append(i)
    pieces.append(decode_reply(tokenizer, run))
    return "".join(pieces)


class ReplyText:
    """Feed it each step's new tokens (`add`), then `finish` when the sequence ends; each
    returns the text newly safe to show. `text` is everything shown, `tokens` all tokens
    taken, `finish_reason` "stop" once a stop string ended the reply. `raw`: special tokens
    shown as their markers (shown_text)."""

    def __init__(self, tokenizer: Tokenizer, stops: Iterable[str] = (), raw: bool = False) -> None:
        self._tokenizer, self._raw = tokenizer, raw
        self._stops = [s for s in stops if s]
        self.tokens: list[int] = []
        self.text = ""  # shown so far
        self.finish_reason: str | None = None
        self._decoded = ""  # the text of tokens[: self._clean], which ends on a character
        self._clean = 0

    @property
    def stopped(self) -> bool:
        """A stop string was found: the reply is over, whatever the engine does next."""
        return self.finish_reason == "stop"

    def add(self, tokens: list[int]) -> str:
        """Take new tokens; return the text they make safe to show ("" if none)."""
        self.tokens += tokens
        if self.finish_reason is not None:
            return ""
        tail = shown_text(self._tokenizer, self.tokens[self._clean :], self._raw)
        if tail.endswith("\ufffd"):
            return ""  # wait for the rest of the character
        self._decoded += tail
        self._clean = len(self.tokens)
        return self._show(self._decoded, final=False)

    def finish(self, reason: str) -> str:
        """The sequence ended for `reason`: return the rest of the text (a cut character
        shows as U+FFFD), up to a stop string if one is in it."""
        if self.finish_reason is not None:
            return ""
        text = self._decoded + shown_text(self._tokenizer, self.tokens[self._clean :], self._raw)
        rest = self._show(text, final=True)
        self.finish_reason = self.finish_reason or reason
        return rest

    def _show(self, text: str, final: bool) -> str:
        # Nothing shown holds a stop string or a held-back start of one, so a stop string
        # can only begin in the text not shown yet.
        shown = len(self.text)
        cut = self._first_stop(text, shown)
        if cut is not None:
            self.finish_reason = "stop"
            end = cut
        else:
            end = len(text) if final else len(text) - self._held(text[shown:])
        new = text[shown:end]
        self.text += new
        return new

    def _first_stop(self, text: str, start: int) -> int | None:
        found = [i for i in (text.find(s, start) for s in self._stops) if i >= 0]
        return min(found, default=None)

    def _held(self, pending: str) -> int:
        """How many characters at the end of `pending` could start a stop string."""
        held = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(pending)), held, -1):
                if pending.endswith(stop[:n]):
                    held = n
                    break
        return held
