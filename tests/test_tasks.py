"""Task evaluation: reading task files, scoring against oracles (a stand-in that always gives
the reference scores 100%, one that gives a wrong number 0%), choice log-likelihoods by hand,
pass@k, and the contamination check between training chats and task questions."""

import json
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import render_chat_files
from test_generate import context_model

from xinslm.artifact import open_array, read_meta
from xinslm.chat_template import render_prompt
from xinslm.contamination import (
    fingerprint_table,
    fingerprints,
    matching_conversations,
    task_questions,
)
from xinslm.errors import XinslmError
from xinslm.sampling import Sampling
from xinslm.task_scoring import pass_at_k
from xinslm.tasks import (
    AnswerItem,
    ChoiceItem,
    load_items,
    mark_contamination,
    run_answer_task,
    run_choice_task,
)
from xinslm.tokenizer import ByteTokenizer

BYTE = ByteTokenizer()
SAMPLING = Sampling(max_new_tokens=1, temperature=0.8, top_k=50, top_p=0.95, seed=7)


def jsonl(path, *records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def answer_items() -> list[AnswerItem]:
    return [
        AnswerItem([{"role": "user", "content": "2+2?"}], "2+2=4\n#### 4", "4"),
        AnswerItem([{"role": "user", "content": "Price?"}], "It costs $1,234.00", "1234"),
        AnswerItem([{"role": "user", "content": "Cold?"}], "#### -5", "-5"),
    ]


class StandInEngine:
    """Replies with a fixed text per question (a function of the item and the sample index)
    and records the settings it was asked for."""

    class config:
        context_len = 256

    def __init__(self, reply):
        self.reply, self.asked = reply, []

    def generate_many(self, prompts, samplings, stop_ids, tool):
        self.asked.append((samplings, stop_ids, tool))
        questions = {tuple(render_prompt(i.prompt, BYTE)): i for i in answer_items()}
        counts: dict = {}
        out = []
        for p in prompts:
            item = questions[tuple(p)]
            j = counts[item.question] = counts.get(item.question, -1) + 1
            out.append(BYTE.encode(self.reply(item, j)))
        return out


def test_a_model_that_gives_the_reference_scores_everything():
    engine = StandInEngine(lambda item, j: item.reference)
    rows, metrics = run_answer_task(engine, BYTE, answer_items(), 1, SAMPLING, None)
    assert metrics == {"items": 3, "accuracy": 1.0, "too_long": 0}
    assert [r["correct"] for r in rows] == [True, True, True]
    assert rows[1] == {
        "question": "Price?",
        "reference": "It costs $1,234.00",
        "reference_answer": "1234",
        "output": "It costs $1,234.00",
        "answer": "1234",
        "correct": True,
    }
    ((samplings, stop_ids, _),) = engine.asked
    assert stop_ids == {BYTE.end_id}
    assert all(s.temperature == 0 for s in samplings)  # one sample per item: greedy


def test_a_question_that_fills_the_context_is_not_asked_and_counts_as_wrong():
    engine = StandInEngine(lambda item, j: item.reference)
    engine.config = type("config", (), {"context_len": 16})  # "2+2?" fits, the others do not
    items = [answer_items()[0], AnswerItem([{"role": "user", "content": "x" * 20}], "#### 1", "1")]
    rows, metrics = run_answer_task(engine, BYTE, items, 1, SAMPLING, None)
    assert metrics == {"items": 2, "accuracy": 0.5, "too_long": 1}
    assert (rows[1]["output"], rows[1]["answer"], rows[1]["correct"]) == (None, None, False)
    ((samplings, _, _),) = engine.asked
    assert len(samplings) == 1


def test_a_model_that_gives_a_wrong_number_scores_nothing():
    engine = StandInEngine(lambda item, j: f"{item.reference}\nNo wait: #### 17")
    rows, metrics = run_answer_task(engine, BYTE, answer_items(), 1, SAMPLING, None)
    assert metrics["accuracy"] == 0.0
    assert [r["answer"] for r in rows] == ["17", "17", "17"]


def test_samples_give_pass_at_k_by_the_unbiased_estimator():
    # Item i is right in the samples j < i: 0, 1 and 2 right out of 4.
    engine = StandInEngine(
        lambda item, j: item.reference if j < answer_items().index(item) else "0"
    )
    rows, metrics = run_answer_task(engine, BYTE, answer_items(), 4, SAMPLING, None)
    assert [r["correct"] for r in rows] == [
        [False] * 4,
        [True, False, False, False],
        [True, True, False, False],
    ]
    assert metrics["accuracy"] == pytest.approx((0 + 1 / 4 + 2 / 4) / 3)
    assert metrics["pass@4"] == pytest.approx((pass_at_k(4, 0, 4) + 1 + 1) / 3)
    ((samplings, _, _),) = engine.asked
    assert [s.seed for s in samplings[:4]] == [7, 8, 9, 10]
    assert {s.temperature for s in samplings} == {0.8}


def test_choice_scores_equal_log_likelihoods_computed_by_hand():
    model = context_model(vocab_size=BYTE.vocab_size)
    items = [
        ChoiceItem("Sky?", ["Blue.", "Green grass.", "Red"], 0),
        ChoiceItem("2+2?", ["4", "five"], 1),
    ]
    rows, metrics = run_choice_task(model, BYTE, items)
    for item, row in zip(items, rows, strict=True):
        context = render_prompt([{"role": "user", "content": item.question}], BYTE)
        by_hand = []
        for choice in item.choices:
            ids = context + BYTE.encode(choice) + [BYTE.end_id]
            logits, _ = model(torch.tensor([ids]))
            logprobs = F.log_softmax(logits[0].float(), dim=-1)
            logprobs = logprobs.detach()
            by_hand.append(
                sum(float(logprobs[t - 1, ids[t]]) for t in range(len(context), len(ids)))
            )
        assert row["logprobs"] == pytest.approx(by_hand, abs=1e-3)
        per_byte = [lp / len(c.encode()) for lp, c in zip(by_hand, item.choices, strict=True)]
        assert row["prediction"] == int(np.argmax(by_hand))
        assert row["prediction_norm"] == int(np.argmax(per_byte))
        assert row["correct"] == (row["prediction"] == item.answer)
    assert metrics["accuracy"] == sum(r["correct"] for r in rows) / 2
    assert metrics["accuracy_norm"] == sum(r["correct_norm"] for r in rows) / 2
    assert metrics["random_baseline"] == pytest.approx((1 / 3 + 1 / 2) / 2)


def test_task_files_of_both_kinds_and_their_errors(tmp_path):
    chat = {
        "messages": [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "#### 3"}]
    }
    path = jsonl(tmp_path / "a.jsonl", chat, {"question": "Q2", "answer": "7 apples"}, chat)
    items = load_items(path, "answer", limit=2)
    assert [(i.question, i.reference_answer) for i in items] == [("Q1", "3"), ("Q2", "7")]
    assert len(load_items(path, "answer")) == 3
    bad = [
        ({"question": "Q", "answer": "none"}, "answer", ":2: the reference answer has no number"),
        (
            {"question": "Q", "choices": ["a"], "answer": 0},
            "choice",
            ":2: 'choices' must be a list",
        ),
        ({"question": "Q", "choices": ["a", "b"], "answer": 2}, "choice", ":2: 'answer' must be"),
        (
            {"question": "Q", "choices": ["a", "b"], "answer": True},
            "choice",
            ":2: 'answer' must be",
        ),
        (
            {"question": "Q", "choices": ["a", "b"], "answer": 0, "x": 1},
            "choice",
            "unknown field 'x'",
        ),
    ]
    good = {
        "answer": {"question": "Q", "answer": "1"},
        "choice": {"question": "Q", "choices": ["a", "b"], "answer": 0},
    }
    for record, kind, message in bad:
        path = jsonl(tmp_path / "bad.jsonl", good[kind], record)
        with pytest.raises(XinslmError, match=message):
            load_items(path, kind)
    with pytest.raises(XinslmError, match="task file not found"):
        load_items(tmp_path / "missing.jsonl", "answer")


def test_task_file_lone_surrogate_names_file_line_and_field(tmp_path):
    path = tmp_path / "task.jsonl"
    good = '{"question": "Q", "choices": ["a", "b"], "answer": 0}\n'
    path.write_text(good + '{"question": "Q", "choices": ["a", "b\\udfff"], "answer": 1}\n')
    with pytest.raises(XinslmError) as e:
        load_items(path, "choice")
    assert str(e.value) == (
        f"{path}:2: choices[1]: lone surrogate \\udfff (character 2) is not valid Unicode; "
        "set chat.utf8_errors: replace to read it as U+FFFD"
    )
    items = load_items(path, "choice", utf8_errors="replace")
    assert items[1].choices == ["a", "b\ufffd"]


def test_decontamination_reads_task_files_by_the_same_rule(tmp_path):
    path = tmp_path / "task.jsonl"
    path.write_text('{"question": "one\\ud800 two", "answer": "1"}\n')
    with pytest.raises(XinslmError, match=re.escape(f"{path}:1: question: lone surrogate")):
        task_questions(path)
    assert task_questions(path, "replace") == ["one\ufffd two"]


# --- contamination ----------------------------------------------------------------------------

LONG = (
    "a farmer has seventeen sheep and all but nine run away "
    "how many sheep does the farmer have left"
)


def test_fingerprints_match_normalized_text_and_13_word_overlaps():
    assert fingerprints("What is 2 + 3?") == fingerprints("  what IS 2+3 ")
    assert fingerprints("What is 2 + 3?") != fingerprints("What is 2 + 4?")
    assert fingerprints("What is 1 + 1?") != fingerprints("What is 1 - 1?")
    long_words = LONG.split()
    inside = "Q: " + " ".join(long_words[2:15]) + " -- unrelated words after"
    assert fingerprints(LONG) & fingerprints(inside)  # 13 words in common
    twelve = "Q: " + " ".join(long_words[2:14]) + " -- unrelated words after"
    assert not fingerprints(LONG) & fingerprints(twelve)  # 12 are not enough


def test_contamination_counts_the_conversations_that_hold_a_question():
    hashes, owners = fingerprint_table(
        [
            fingerprints("What is 2 + 3?"),
            fingerprints(LONG.upper()),
            fingerprints("hello"),
            fingerprints("what is 2+3"),
        ]
    )
    assert matching_conversations(hashes, owners, ["what is 2 + 3", LONG]).tolist() == [0, 1, 3]
    rows = [{"question": "What is 2+3?"}, {"question": "Something else entirely"}]
    assert mark_contamination(rows, hashes, owners) == 2
    assert [r["seen_in_training"] for r in rows] == [True, False]


def test_render_chat_saves_fingerprints_and_decontaminate_drops_the_matches(tmp_path):
    def chat(question):
        return {
            "messages": [
                {"role": "user", "content": question},
                {"role": "assistant", "content": "ok"},
            ]
        }

    train = jsonl(tmp_path / "train.jsonl", chat("What is 2 + 3?"), chat("Hello there"), chat(LONG))
    val = jsonl(tmp_path / "val.jsonl", chat("Bye"))
    task = jsonl(
        tmp_path / "task.jsonl",
        {"question": "what is 2+3", "answer": "5"},
        {"question": LONG, "answer": "9"},
    )
    out = tmp_path / "chat"
    render_chat_files(train, val, BYTE, out, 256)
    meta = read_meta(out, "chat", BYTE.identity())
    hashes, owners = (
        open_array(out, meta, n) for n in ("train_fingerprints", "train_fingerprint_owners")
    )
    assert matching_conversations(hashes, owners, ["WHAT is 2+3?"]).tolist() == [0]
    assert meta["conversations"]["train"] == 3 and meta["decontaminated"] == {}

    render_chat_files(train, val, BYTE, out, 256, decontaminate=[task])
    meta = read_meta(out, "chat", BYTE.identity())
    assert meta["conversations"]["train"] == 1
    assert meta["decontaminated"] == {task: {"questions": 2, "dropped": 2}}
    ids = open_array(out, meta, "train_ids").tolist()
    assert "Hello there" in BYTE.decode(ids) and "2 + 3" not in BYTE.decode(ids)
    hashes = open_array(out, meta, "train_fingerprints")
    assert math.isclose(
        len(
            matching_conversations(
                hashes, open_array(out, meta, "train_fingerprint_owners"), ["what is 2+3"]
            )
        ),
        0,
    )
