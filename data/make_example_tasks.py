"""Generate the bundled example evaluation tasks for xinslm.

Writes two task files next to this script, drawn from the same facts and phrasings as the
example chat data (make_example_chat.py, whose tables and task functions are imported):

- ``example_task_choice.jsonl``: 40 multiple-choice items, one JSON object per line of the
  form ``{"question": ..., "choices": [4 strings], "answer": index of the right choice}``
  (capitals, opposites, colours, the day after or before, which number is bigger or smaller,
  small additions). Each question is phrased as a user message of the chat data, and each
  choice is the assistant sentence the chat data would give, right or wrong, the right one
  at a random position. An addition's choices carry no calculator annotation (``3 + 4 =
  7.``): the choices are ranked by their likelihood, and a ``<<3+4=7>>`` would hand the
  answer to the model as the tool's result.
- ``example_task_answer.jsonl``: 30 arithmetic questions (additions, subtractions, minutes
  to seconds) in the chat format ``{"messages": [user question, assistant reference]}``; the
  reference is the chat data's answer sentence, with its ``<<expr=result>>`` annotation,
  then a final line ``#### N`` with the number, e.g. ``3 + 4 = <<3+4=7>>7.\\n#### 7``.

No question equals a user message of the training chats (``example_data_chat.jsonl``) once
both are reduced to their lowercase words (as xinslm/contamination.py compares them, which
also catches every lowercase, whitespace-collapsed match), and none appears twice: the
tasks are drawn with their own seeds and a drawn question that collides is skipped. Within
a file no two items share their right answer either, so each asks about a different fact.

The output is fully deterministic: running the script twice gives identical bytes.
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRAIN_CHAT_PATH = HERE / "example_data_chat.jsonl"
CHOICE_OUTPUT_PATH = HERE / "example_task_choice.jsonl"
ANSWER_OUTPUT_PATH = HERE / "example_task_answer.jsonl"
CHOICE_SEED = 2  # the chat data uses seeds 0 (train) and 1 (val)
ANSWER_SEED = 3
NUM_CHOICES = 4
MAX_DRAWS = 10_000  # draws of one question before giving up on finding a fresh one
ANNOTATION = re.compile(r"<<([^<>=]*)=([^<>=]*)>>")
WORD = re.compile(r"[a-z0-9]+")


def _load_chat_module():
    """make_example_chat.py, imported by path (it sits next to this script, not in a package)."""
    spec = importlib.util.spec_from_file_location(
        "make_example_chat", HERE / "make_example_chat.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


chat = _load_chat_module()

# (question, right answer sentence, wrong answer sentences)
ChoiceItem = tuple[str, str, list[str]]


def normalize(text: str) -> str:
    """The form questions are compared in: their lowercase words (runs of letters and digits,
    as in xinslm/contamination.py), so "What is 1 - 1?" matches "What is 1 + 1?" too."""
    return " ".join(WORD.findall(text.lower()))


def training_questions(path: Path) -> set[str]:
    """The normalized user messages of the training chats."""
    questions = set()
    with path.open(encoding="utf-8") as f:
        for line in f:
            for message in json.loads(line)["messages"]:
                if message["role"] == "user":
                    questions.add(normalize(message["content"]))
    return questions


class FreshDraws:
    """Draws (question, answer) pairs from the chat's task functions, skipping questions seen
    before (those of the training chats and those already drawn) and answers already drawn."""

    def __init__(self, rng: random.Random, seen: set[str]) -> None:
        self.rng = rng
        self.seen = seen  # normalized questions, shared by the files
        self.answers: set[str] = set()  # this file's answers
        self.skipped = 0

    def draw(
        self, task: chat.Task, keep: Callable[[str], bool] = lambda q: True
    ) -> tuple[str, str]:
        """A pair from `task` that `keep` keeps, its question and its answer both fresh."""
        for _ in range(MAX_DRAWS):
            question, answer = task(self.rng)
            if not keep(question):
                continue
            key = normalize(question)
            if key not in self.seen and answer not in self.answers:
                self.seen.add(key)
                self.answers.add(answer)
                return question, answer
            self.skipped += 1
        raise RuntimeError(f"{task.__name__}: no fresh question and answer in {MAX_DRAWS} draws")


def swap_last(sentence: str, right: str, wrong: str) -> str:
    """The sentence with its final word `right` (before the full stop) replaced by `wrong`."""
    assert sentence.endswith(f"{right}."), (sentence, right)
    return f"{sentence[: -len(right) - 1]}{wrong}."


def last_word(sentence: str) -> str:
    return sentence.rstrip(".").rsplit(" ", 1)[1]


def from_table(rng: random.Random, answer: str, pool: list[str], exclude: set[str]) -> list[str]:
    """Three wrong sentences: the answer with its final word swapped for other pool words."""
    right = last_word(answer)
    others = sorted(set(pool) - exclude - {right})
    return [swap_last(answer, right, w) for w in rng.sample(others, NUM_CHOICES - 1)]


def choice_capital(draws: FreshDraws) -> ChoiceItem:
    question, answer = draws.draw(chat.task_capital)
    capitals = [capital for _, capital in chat.CAPITALS]
    return question, answer, from_table(draws.rng, answer, capitals, set())


def choice_opposite(draws: FreshDraws) -> ChoiceItem:
    question, answer = draws.draw(chat.task_opposite)
    words = [w for pair in chat.OPPOSITES for w in pair]
    word = answer.split(" ")[3]  # "The opposite of {word} is {opposite}."
    return question, answer, from_table(draws.rng, answer, words, {word})


def choice_color(draws: FreshDraws) -> ChoiceItem:
    question, answer = draws.draw(chat.task_color)
    colors = [color for _, color in chat.COLORS]
    return question, answer, from_table(draws.rng, answer, colors, set())


def choice_day(draws: FreshDraws) -> ChoiceItem:
    question, answer = draws.draw(chat.task_day)
    day = answer.split(" ")[3]  # "The day after/before {day} is {other}."
    return question, answer, from_table(draws.rng, answer, chat.DAYS, {day})


def choice_compare(draws: FreshDraws) -> ChoiceItem:
    """Which is bigger or smaller of two numbers (not the yes/no style, which has only two
    sensible answers): the other number, and two numbers near those asked about."""
    question, answer = draws.draw(chat.task_compare, keep=lambda q: q.startswith("Which"))
    numbers = [int(n) for n in re.findall(r"\d+", question)]
    right = int(answer.split(" ")[0])  # "{n} is bigger." / "{n} is smaller."
    other = next(n for n in numbers if n != right)
    near = {n + d for n in numbers for d in (-3, -2, -1, 1, 2, 3)} - set(numbers)
    near = sorted(n for n in near if 0 <= n < 100)
    wrong = [other, *draws.rng.sample(near, NUM_CHOICES - 2)]
    return question, answer, [f"{n}{answer[len(str(right)) :]}" for n in wrong]


def choice_add(draws: FreshDraws) -> ChoiceItem:
    """A small addition, its sentences without the calculator annotation; the wrong sums are
    off by one, two or ten."""
    question, annotated = draws.draw(chat.task_add)
    answer = ANNOTATION.sub("", annotated)
    right = int(last_word(answer))
    near = sorted(right + d for d in (-10, -2, -1, 1, 2, 10) if right + d >= 0)
    wrong = draws.rng.sample(near, NUM_CHOICES - 1)
    return question, answer, [swap_last(answer, str(right), str(n)) for n in wrong]


# Each kind of item and how many it makes. Some facts have few questions left once the
# training chats' are taken (11 of the 36 capital questions, asking about 7 countries; 10 of
# the 30 minutes questions, about 8 minute counts; 8 of the 28 day questions, about 7
# days), so those kinds make fewer items.
CHOICE_KINDS: list[tuple[Callable[[FreshDraws], ChoiceItem], int]] = [
    (choice_capital, 6),
    (choice_opposite, 8),
    (choice_color, 7),
    (choice_add, 7),
    (choice_day, 6),
    (choice_compare, 6),
]

ANSWER_KINDS: list[tuple[chat.Task, int]] = [
    (chat.task_add, 12),
    (chat.task_subtract, 12),
    (chat.task_minutes, 6),
]


def kind_order(rng: random.Random, kinds: list[tuple[Callable, int]]) -> list[Callable]:
    """Each kind repeated its count of times, in an order shuffled by `rng`."""
    order = [kind for kind, count in kinds for _ in range(count)]
    rng.shuffle(order)
    return order


def choice_items(draws: FreshDraws) -> list[dict]:
    items = []
    for kind in kind_order(draws.rng, CHOICE_KINDS):
        question, right, wrong = kind(draws)
        answer = draws.rng.randrange(NUM_CHOICES)
        choices = [*wrong[:answer], right, *wrong[answer:]]
        assert len(set(choices)) == NUM_CHOICES, choices
        items.append({"question": question, "choices": choices, "answer": answer})
    return items


def answer_items(draws: FreshDraws) -> list[dict]:
    items = []
    for task in kind_order(draws.rng, ANSWER_KINDS):
        question, answer = draws.draw(task)
        ((_, result),) = ANNOTATION.findall(answer)  # the one annotation, and its result
        assert answer.split(">>")[1].startswith(result), answer
        reference = f"{answer}\n#### {result}"
        messages = [
            {"role": "user", "content": question},
            {"role": "assistant", "content": reference},
        ]
        items.append({"messages": messages})
    return items


def write_items(path: Path, items: list[dict]) -> None:
    lines = [json.dumps(item, ensure_ascii=False) for item in items]
    with path.open("w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(lines) + "\n")


def main() -> None:
    seen = training_questions(TRAIN_CHAT_PATH)
    print(f"read {len(seen)} distinct user messages from {TRAIN_CHAT_PATH}")
    for path, seed, make, kinds in [
        (CHOICE_OUTPUT_PATH, CHOICE_SEED, choice_items, CHOICE_KINDS),
        (ANSWER_OUTPUT_PATH, ANSWER_SEED, answer_items, ANSWER_KINDS),
    ]:
        draws = FreshDraws(random.Random(seed), seen)
        items = make(draws)
        write_items(path, items)
        shown = ", ".join(f"{kind.__name__.split('_', 1)[1]} {n}" for kind, n in kinds)
        print(f"wrote {len(items)} items to {path}: {shown}")
        print(f"  ({draws.skipped} draws skipped: question or answer seen before)")


if __name__ == "__main__":
    main()
