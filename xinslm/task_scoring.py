"""Scoring a model on tasks (issue 15): the final answer of a GSM8K-style reply, pass@k, and
the log-likelihoods that rank the choices of an ARC/MMLU-style question.

- `extract_answer`: the number after the last `####`, else the last number of the text;
  `$`, thousands commas and trailing zeros after a decimal point dropped, a fraction `a/b`
  read as its value, so "$1,234.00", "#### 1234" and "2468/2" all read "1234".
- `pass_at_k`: the unbiased estimator of Chen et al. (2021): the chance that at least one of
  k samples drawn from n, of which c are correct, is correct.
- `continuation_logprobs`: the summed log-probability of each continuation after a shared
  context, in one padded forward pass; `pick_choice` turns them into the `acc` pick (summed)
  and the `acc_norm` pick (per byte of the choice's text), as lm-eval scores them.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

import torch
import torch.nn.functional as F

from xinslm.model import NanoChatModel

_NUMBER = re.compile(r"-?\$?-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d[\d,]*(?:\.\d+)?)?")


def extract_answer(text: str) -> str | None:
    """The reply's final answer as a normalized number string, or None if it has none."""
    after = text.rsplit("####", 1)[1] if "####" in text else None
    if after is not None and (found := _NUMBER.findall(after)):
        return normalize_number(found[0])
    found = _NUMBER.findall(text)
    return normalize_number(found[-1]) if found else None


def normalize_number(raw: str) -> str | None:
    """'$1,234.50' -> '1234.5', '18.00' -> '18', '3/4' -> '0.75', '-5' -> '-5'."""
    cleaned = raw.replace("$", "").replace(",", "").replace(" ", "")
    try:
        if "/" in cleaned:
            top, bottom = cleaned.split("/")
            if Decimal(bottom) == 0:
                return None
            value = Fraction(Decimal(top)) / Fraction(Decimal(bottom))
            number = Decimal(value.numerator) / Decimal(value.denominator)
        else:
            number = Decimal(cleaned)
    except (InvalidOperation, ValueError):
        return None
    text = format(number.normalize(), "f")
    return "0" if text in ("-0", "0") else text


def pass_at_k(n: int, correct: int, k: int) -> float:
    """1 - C(n - c, k) / C(n, k), computed as a product so large n does not overflow."""
    if not 0 <= correct <= n or not 1 <= k <= n:
        raise ValueError(
            f"pass@k needs 0 <= correct <= n and 1 <= k <= n, got {n=} {correct=} {k=}"
        )
    if n - correct < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - correct + 1, n + 1))


@torch.no_grad()
def continuation_logprobs(
    model: NanoChatModel, context: list[int], continuations: list[list[int]]
) -> list[float]:
    """Sum over each continuation's tokens of log p(token | context and the tokens before it)."""
    rows = [context + c for c in continuations]
    width = max(len(r) for r in rows)
    device = next(model.parameters()).device
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows], device=device)
    model.eval()
    logits, _ = model(ids[:, :-1])
    logprobs = F.log_softmax(logits.float(), dim=-1)
    sums = []
    for row, continuation in enumerate(continuations):
        start, end = len(context) - 1, len(context) - 1 + len(continuation)
        targets = ids[row, start + 1 : end + 1]
        sums.append(float(logprobs[row, start:end].gather(-1, targets[:, None]).sum()))
    return sums


def pick_choice(logprobs: list[float], choice_texts: list[str]) -> tuple[int, int]:
    """(acc pick, acc_norm pick): the likeliest choice, summed and per UTF-8 byte."""
    per_byte = [
        lp / max(1, len(t.encode("utf-8"))) for lp, t in zip(logprobs, choice_texts, strict=True)
    ]
    return max(range(len(logprobs)), key=logprobs.__getitem__), max(
        range(len(per_byte)), key=per_byte.__getitem__
    )
