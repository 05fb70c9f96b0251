"""The calculator tool at generation: when a reply closes a call with <|calc_end|>, the
expression since its <|calc_start|> is evaluated (calculator.py, never run as code) and the
result, between <|result_start|> and <|result_end|>, is what the engine feeds the model next
instead of what it would have sampled (engine.py). A refused expression's result is the
refusal ("error: ..."), so the model sees why, as it would see any other result.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xinslm.calculator import CalculatorError, calculate

if TYPE_CHECKING:
    from xinslm.tokenizer import Tokenizer

MAX_CALL_TOKENS = 256  # a call longer than this is answered with a refusal, not decoded


class Calculator:
    """The tool as the engine uses it: `trigger` is the token that ends a call; `respond`
    gives the tokens to force after it."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        special = tokenizer.special
        self.start, self.trigger = special["<|calc_start|>"], special["<|calc_end|>"]
        self.result_start, self.result_end = special["<|result_start|>"], special["<|result_end|>"]

    def respond(self, tokens: list[int]) -> list[int]:
        """`tokens` end with the trigger: the result tokens of the call they end."""
        return [self.result_start, *self.tokenizer.encode(self.answer(tokens)), self.result_end]

    def answer(self, tokens: list[int]) -> str:
        """The result's text for the call at the end of `tokens`."""
        body = tokens[:-1]
        start = max((i for i, t in enumerate(body) if t == self.start), default=None)
        if start is None:
            return "error: no <|calc_start|> before <|calc_end|>"
        expression = body[start + 1 :]
        if len(expression) > MAX_CALL_TOKENS:
            return "error: expression too long"
        if any(t in self.tokenizer.special.values() for t in expression):
            return "error: not an arithmetic expression"
        try:
            return calculate(self.tokenizer.decode(expression))
        except CalculatorError as e:
            return f"error: {e}"
