"""Task scoring (issue 15's first part): answer extraction on tricky strings, pass@k against
enumeration, choice log-likelihoods against a hand computation."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from test_generate import context_model

from xinslm.task_scoring import (
    continuation_logprobs,
    extract_answer,
    normalize_number,
    pass_at_k,
    pick_choice,
)


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("She pays 16-3-4 = <<16-3-4=9>>9 dollars.\n#### 18", "18"),
        ("#### 1,234", "1234"),
        ("The total is $18.00.", "18"),
        ("It drops to -5 degrees", "-5"),
        ("3/4 of the cake", "0.75"),
        ("There is no number here.", None),
        ("first 12, then 7 and finally 40.", "40"),  # the last number
        ("#### 72 (from 3 boxes of 24)", "72"),  # the number right after ####
        ("it costs $-3.50", "-3.5"),
        ("#### 0.50", "0.5"),
        ("1,000,000 grains", "1000000"),
        ("#### nothing after the marks, but 9 before", "9"),
        ("5/0 is no number", None),  # a fraction over zero has no value
    ],
)
def test_the_final_answer_is_extracted_and_normalized(text, answer):
    assert extract_answer(text) == answer


def test_equal_numbers_normalize_alike():
    assert {normalize_number(s) for s in ("18", "18.0", "18.00", "$18", "36/2")} == {"18"}
    assert normalize_number("-0.0") == "0"
    assert normalize_number("1/0") is None


@pytest.mark.parametrize(
    "flags", [(1, 0, 0, 1, 0), (0, 0, 0, 0), (1, 1, 1), (0, 1, 0, 0, 0, 0, 1, 0)]
)
def test_pass_at_k_is_the_chance_a_k_subset_holds_a_correct_sample(flags):
    n, correct = len(flags), sum(flags)
    for k in range(1, n + 1):
        subsets = list(itertools.combinations(flags, k))
        enumerated = sum(any(s) for s in subsets) / len(subsets)
        assert pass_at_k(n, correct, k) == pytest.approx(enumerated, abs=1e-12)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(5, 2))
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


@torch.no_grad()
def hand_logprob(model, context, continuation):
    """The continuation's log-probability, token by token, each from its own forward pass."""
    total, seq = 0.0, list(context)
    for token in continuation:
        logits, _ = model(torch.tensor([seq]))
        total += float(F.log_softmax(logits[0, -1].float(), -1)[token])
        seq.append(token)
    return total


def test_choice_log_likelihoods_equal_a_hand_computation():
    model = context_model()
    records = [
        ([256, 81, 58, 32], [[65], [66, 67, 68], [69, 70]]),  # BOS "Q: " and three choices
        ([256, 72, 105], [[33, 33, 33, 33], [63]]),
    ]
    for context, choices in records:
        got = continuation_logprobs(model, context, choices)
        want = [hand_logprob(model, context, c) for c in choices]
        assert got == pytest.approx(want, abs=1e-4)
        assert len(set(round(g, 3) for g in got)) == len(got)  # the choices score differently


def test_acc_sums_and_acc_norm_divides_by_bytes():
    # The long choice has the higher total but the lower score per byte.
    assert pick_choice([-3.0, -4.0], ["a", "abcdefgh"]) == (0, 1)
    assert pick_choice([-1.0, -4.0], ["a", "ab"]) == (0, 0)
