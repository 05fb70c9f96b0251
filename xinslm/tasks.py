"""Task evaluation (the evaluate-task stage's work): reading a task file and scoring the chat
model on its items.

Two kinds of task file, JSONL, one item per line:
- `answer` (GSM8K-style): a chat record `{"messages": [..., user, assistant]}` whose last
  message is the reference answer and the messages before it the prompt, or
  `{"question": str, "answer": str}`. The model replies (greedily, or `samples` times for
  pass@k); a reply is correct when its final answer (task_scoring.extract_answer) equals
  the reference's.
- `choice` (ARC/MMLU-style): `{"question": str, "choices": [str, ...], "answer": index}`.
  Each choice is scored by the log-likelihood that the model's reply to the question is
  exactly that choice (its tokens and <|end|>), summed (`accuracy`) and per byte of the
  choice (`accuracy_norm`), against the random baseline.

Every item's prediction is a row the stage writes to eval/tasks/<name>.jsonl.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from xinslm.chat_records import validate_record
from xinslm.chat_template import decode_reply, render_prompt
from xinslm.contamination import matching_conversations, seen_questions
from xinslm.engine import Engine
from xinslm.errors import XinslmError
from xinslm.model import NanoChatModel
from xinslm.sampling import Sampling
from xinslm.task_scoring import continuation_logprobs, extract_answer, pass_at_k, pick_choice
from xinslm.text import BadLine, read_jsonl
from xinslm.tokenizer import Tokenizer
from xinslm.tool_calls import Calculator


@dataclass
class AnswerItem:
    prompt: list[dict]  # the conversation the model answers (ends with the question)
    reference: str
    reference_answer: str

    @property
    def question(self) -> str:
        return self.prompt[-1]["content"]


@dataclass
class ChoiceItem:
    question: str
    choices: list[str]
    answer: int


def load_items(path: str | Path, kind: str, limit: int = 0, utf8_errors: str = "strict") -> list:
    """The first `limit` items (0: all) of a task file; a bad line is an error naming it
    (utf8_errors, chat.utf8_errors: as text.read_jsonl)."""
    path = Path(path)
    if not path.is_file():
        raise XinslmError(f"{path}: task file not found (eval.tasks)")
    parse = _answer_item if kind == "answer" else _choice_item
    items = []
    for lineno, record in read_jsonl(path, utf8_errors):
        if limit and len(items) == limit:
            break
        try:
            if isinstance(record, BadLine):
                raise ValueError(record.problem)
            items.append(parse(record))
        except ValueError as e:
            raise XinslmError(f"{path}:{lineno}: {e}") from None
    if not items:
        raise XinslmError(f"{path}: no items")
    return items


def _answer_item(record: object) -> AnswerItem:
    if isinstance(record, dict) and "messages" not in record and "question" in record:
        question, reference = record.get("question"), record.get("answer")
        if not isinstance(question, str) or not isinstance(reference, str):
            raise ValueError("'question' and 'answer' must be strings")
        prompt = [{"role": "user", "content": question}]
    else:
        messages = validate_record(record)
        if messages[-1]["role"] != "assistant":
            raise ValueError("the last message must be the assistant's reference answer")
        prompt, reference = messages[:-1], messages[-1]["content"]
    answer = extract_answer(reference)
    if answer is None:
        raise ValueError("the reference answer has no number (expected '#### N' or a number)")
    return AnswerItem(prompt, reference, answer)


def _choice_item(record: object) -> ChoiceItem:
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    extra = sorted(set(record) - {"question", "choices", "answer"})
    if extra:
        raise ValueError(
            f"unknown field '{extra[0]}' (a choice item has question, choices, answer)"
        )
    question, choices, answer = (record.get(k) for k in ("question", "choices", "answer"))
    if not isinstance(question, str):
        raise ValueError("'question' must be a string")
    if not isinstance(choices, list) or len(choices) < 2:
        raise ValueError("'choices' must be a list of at least two strings")
    if not all(isinstance(c, str) and c for c in choices):
        raise ValueError("every choice must be a non-empty string")
    if type(answer) is not int or not 0 <= answer < len(choices):
        raise ValueError(
            f"'answer' must be the index of the right choice (0 to {len(choices) - 1})"
        )
    return ChoiceItem(question, choices, answer)


def run_answer_task(
    engine: Engine,
    tokenizer: Tokenizer,
    items: list[AnswerItem],
    samples: int,
    sampling: Sampling,
    tool: Calculator | None,
) -> tuple[list[dict], dict]:
    """Reply to every item (`samples` times each: greedily when 1, else with `sampling` and
    seeds sampling.seed + j), decoded together; the rows and the metrics. A question that
    fills the model's context gets no reply and counts as wrong (`too_long`)."""
    context_len = engine.config.context_len
    prompts = [render_prompt(item.prompt, tokenizer) for item in items]
    fits = [len(p) < context_len for p in prompts]
    asked = [(p, j) for p, fit in zip(prompts, fits, strict=True) if fit for j in range(samples)]
    settings = [
        replace(
            sampling,
            max_new_tokens=context_len,  # a reply runs to <|end|> or the context's end
            temperature=sampling.temperature if samples > 1 else 0.0,
            seed=sampling.seed + j,
        )
        for _, j in asked
    ]
    replies = iter(engine.generate_many([p for p, _ in asked], settings, {tokenizer.end_id}, tool))
    rows, correct_counts = [], []
    for item, fit in zip(items, fits, strict=True):
        outputs = [decode_reply(tokenizer, next(replies)) if fit else None for _ in range(samples)]
        answers = [extract_answer(o) if o is not None else None for o in outputs]
        correct = [a is not None and a == item.reference_answer for a in answers]
        correct_counts.append(sum(correct))
        one = samples == 1  # one reply: plain values; n: lists
        rows.append(
            {
                "question": item.question,
                "reference": item.reference,
                "reference_answer": item.reference_answer,
                "output": outputs[0] if one else outputs,
                "answer": answers[0] if one else answers,
                "correct": correct[0] if one else correct,
            }
        )
    metrics = {
        "items": len(items),
        "accuracy": sum(c / samples for c in correct_counts) / len(items),
        "too_long": fits.count(False),
    }
    if samples > 1:
        passed = [pass_at_k(samples, c, samples) for c in correct_counts]
        metrics[f"pass@{samples}"] = sum(passed) / len(items)
    return rows, metrics


@torch.no_grad()
def run_choice_task(
    model: NanoChatModel, tokenizer: Tokenizer, items: list[ChoiceItem]
) -> tuple[list[dict], dict]:
    """Score each item's choices as replies to its question; the rows and the metrics. An
    item whose question and longest choice do not fit the context counts as wrong."""
    rows, hits, hits_norm, too_long = [], 0, 0, 0
    for item in items:
        context = render_prompt([{"role": "user", "content": item.question}], tokenizer)
        continuations = [[*tokenizer.encode(c), tokenizer.end_id] for c in item.choices]
        if len(context) + max(len(c) for c in continuations) > model.config.context_len:
            too_long += 1  # no score for a choice the model cannot read whole: wrong
            logprobs, pick, pick_norm = None, None, None
        else:
            logprobs = continuation_logprobs(model, context, continuations)
            pick, pick_norm = pick_choice(logprobs, item.choices)
        hits += pick == item.answer
        hits_norm += pick_norm == item.answer
        rows.append(
            {
                "question": item.question,
                "choices": item.choices,
                "reference": item.answer,
                "logprobs": None if logprobs is None else [round(lp, 4) for lp in logprobs],
                "prediction": pick,
                "prediction_norm": pick_norm,
                "correct": pick == item.answer,
                "correct_norm": pick_norm == item.answer,
            }
        )
    metrics = {
        "items": len(items),
        "accuracy": hits / len(items),
        "accuracy_norm": hits_norm / len(items),
        "random_baseline": sum(1 / len(item.choices) for item in items) / len(items),
        "too_long": too_long,
    }
    return rows, metrics


def mark_contamination(rows: list[dict], hashes: np.ndarray, owners: np.ndarray) -> int:
    """Mark each row `seen_in_training` when a training conversation holds its question
    (render-chat's fingerprints, see contamination.py); return how many conversations do."""
    questions = [row["question"] for row in rows]
    for row, seen in zip(rows, seen_questions(hashes, questions), strict=True):
        row["seen_in_training"] = seen
    return len(matching_conversations(hashes, owners, questions))
