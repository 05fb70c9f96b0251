"""Generate the bundled example chat dataset for xinslm.

Writes ``example_data_chat.jsonl`` next to this script: 400 short conversations (and 60
held-out ones for val loss in ``example_data_chat_val.jsonl``),
one JSON object per line of the form ``{"messages": [{"role": ..., "content": ...}]}``.
The tasks are simple and regular (small arithmetic, spelling, opposites, capitals,
colours, days of the week, small talk) so that a tiny model can partly learn them.

The arithmetic answers (additions, subtractions, minutes to seconds) mark their arithmetic
GSM8K-style with a calculator annotation ``<<expr=result>>`` right before the result, as in
``3 + 4 = <<3+4=7>>7.`` or ``10 minutes is <<10*60=600>>600 seconds.``; the pipeline's
render-chat turns each annotation into a calculator tool call (see xinslm/chat_template.py).

The output is fully deterministic: running the script twice gives identical bytes.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

NUM_CONVERSATIONS = 400
NUM_WITH_SYSTEM = 100  # about 25%
NUM_MULTI_TURN = 120  # about 30%
MAX_CHARS = 400
NUM_VAL = 60
OUTPUT_PATH = Path(__file__).resolve().parent / "example_data_chat.jsonl"
VAL_OUTPUT_PATH = Path(__file__).resolve().parent / "example_data_chat_val.jsonl"

Message = dict[str, str]
Task = Callable[[random.Random], tuple[str, str]]

SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "Answer briefly.",
    "You are a friendly tutor for young children.",
    "Be polite and concise.",
]

WORDS = [
    "cat",
    "dog",
    "sun",
    "tree",
    "book",
    "milk",
    "fish",
    "bird",
    "rain",
    "star",
    "moon",
    "apple",
    "house",
    "water",
    "green",
    "bread",
    "chair",
    "river",
    "cloud",
    "lamp",
    "door",
    "hat",
    "cup",
    "boat",
    "café",
    "naïve",
]

OPPOSITES = [
    ("hot", "cold"),
    ("big", "small"),
    ("up", "down"),
    ("fast", "slow"),
    ("happy", "sad"),
    ("light", "dark"),
    ("open", "closed"),
    ("old", "young"),
    ("wet", "dry"),
    ("early", "late"),
    ("full", "empty"),
    ("hard", "soft"),
    ("day", "night"),
    ("in", "out"),
    ("yes", "no"),
    ("left", "right"),
]

CAPITALS = [
    ("France", "Paris"),
    ("Japan", "Tokyo"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Germany", "Berlin"),
    ("Egypt", "Cairo"),
    ("Canada", "Ottawa"),
    ("Kenya", "Nairobi"),
    ("Peru", "Lima"),
    ("Norway", "Oslo"),
    ("Greece", "Athens"),
    ("Portugal", "Lisbon"),
]

COLORS = [
    ("the sky", "blue"),
    ("grass", "green"),
    ("a banana", "yellow"),
    ("snow", "white"),
    ("a strawberry", "red"),
    ("coal", "black"),
    ("an orange", "orange"),
    ("a carrot", "orange"),
    ("a lemon", "yellow"),
    ("milk", "white"),
    ("a tomato", "red"),
    ("a crow", "black"),
    ("a leaf", "green"),
    ("the sea", "blue"),
]

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]

SMALL_TALK = [
    ("Hello!", "Hello! How can I help you today?"),
    ("Hi there.", "Hi! What would you like to talk about?"),
    ("Good morning!", "Good morning! I hope you have a lovely day."),
    ("How are you?", "I'm doing well, thank you. How are you?"),
    ("Thank you!", "You're welcome!"),
    ("Thanks for your help.", "You're welcome. I'm glad I could help."),
    ("Goodbye!", "Goodbye! Have a nice day."),
    ("What is your name?", "I'm a small assistant. I don't have a name."),
    ("Can you help me?", "Of course. What do you need?"),
    ("I'm going to a café later.", "That sounds nice. Enjoy your coffee!"),
    ("It is raining today.", "Rainy days are good for reading and a warm drink."),
    ("I'm tired.", "I'm sorry to hear that. Maybe a short rest would help."),
    ("Have a good night.", "Thank you, good night!"),
    ("Nice to meet you.", "Nice to meet you too!"),
]


def task_add(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 20), rng.randint(0, 20)
    question = rng.choice(
        [
            f"What is {a} plus {b}?",
            f"What is {a} + {b}?",
            f"Add {a} and {b}.",
            f"Can you add {a} and {b}?",
            f"What do you get if you add {b} to {a}?",
        ]
    )
    return question, f"{a} + {b} = <<{a}+{b}={a + b}>>{a + b}."


def task_subtract(rng: random.Random) -> tuple[str, str]:
    a = rng.randint(1, 20)
    b = rng.randint(0, a)
    question = rng.choice(
        [
            f"What is {a} minus {b}?",
            f"What is {a} - {b}?",
            f"Subtract {b} from {a}.",
            f"If I have {a} apples and eat {b}, how many are left?",
        ]
    )
    if "apples" in question:
        return question, f"You have <<{a}-{b}={a - b}>>{a - b} apples left."
    return question, f"{a} - {b} = <<{a}-{b}={a - b}>>{a - b}."


def task_compare(rng: random.Random) -> tuple[str, str]:
    a, b = rng.sample(range(0, 100), 2)
    style = rng.randrange(3)
    if style == 0:
        return f"Which is bigger, {a} or {b}?", f"{max(a, b)} is bigger."
    if style == 1:
        return f"Which number is smaller: {a} or {b}?", f"{min(a, b)} is smaller."
    answer = f"Yes, {a} is greater than {b}." if a > b else f"No, {a} is less than {b}."
    return f"Is {a} greater than {b}?", answer


def task_spell(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(WORDS)
    question = rng.choice(
        [
            f"Spell the word {word}.",
            f"How do you spell {word}?",
            f"Spell {word} letter by letter.",
        ]
    )
    return question, "-".join(word.upper())


def task_reverse(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(WORDS)
    question = rng.choice(
        [
            f"Reverse the word {word}.",
            f"What is {word} spelled backwards?",
            f"Write {word} backwards.",
        ]
    )
    return question, word[::-1]


def task_count_letters(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(WORDS)
    question = rng.choice(
        [
            f"How many letters are in the word {word}?",
            f"Count the letters in {word}.",
            f"How long is the word {word}?",
        ]
    )
    return question, f"The word {word} has {len(word)} letters."


def task_opposite(rng: random.Random) -> tuple[str, str]:
    word, opposite = rng.choice(OPPOSITES)
    if rng.random() < 0.5:
        word, opposite = opposite, word
    question = rng.choice(
        [
            f"What is the opposite of {word}?",
            f"Give me the opposite of {word}.",
            f"What word means the opposite of {word}?",
        ]
    )
    return question, f"The opposite of {word} is {opposite}."


def task_capital(rng: random.Random) -> tuple[str, str]:
    country, capital = rng.choice(CAPITALS)
    question = rng.choice(
        [
            f"What is the capital of {country}?",
            f"Which city is the capital of {country}?",
            f"Name the capital of {country}.",
        ]
    )
    return question, f"The capital of {country} is {capital}."


def task_day(rng: random.Random) -> tuple[str, str]:
    i = rng.randrange(len(DAYS))
    day = DAYS[i]
    if rng.random() < 0.6:
        after = DAYS[(i + 1) % len(DAYS)]
        question = rng.choice([f"What day comes after {day}?", f"What is the day after {day}?"])
        return question, f"The day after {day} is {after}."
    before = DAYS[(i - 1) % len(DAYS)]
    question = rng.choice([f"What day comes before {day}?", f"What is the day before {day}?"])
    return question, f"The day before {day} is {before}."


def task_minutes(rng: random.Random) -> tuple[str, str]:
    m = rng.randint(1, 10)
    unit = "minute" if m == 1 else "minutes"
    question = rng.choice(
        [
            f"How many seconds are in {m} {unit}?",
            f"Convert {m} {unit} to seconds.",
            f"{m} {unit} is how many seconds?",
        ]
    )
    return question, f"{m} {unit} is <<{m}*60={m * 60}>>{m * 60} seconds."


def task_color(rng: random.Random) -> tuple[str, str]:
    thing, color = rng.choice(COLORS)
    question = rng.choice(
        [
            f"What color is {thing}?",
            f"What colour is {thing}?",
            f"Tell me the color of {thing}.",
        ]
    )
    return question, f"{thing[0].upper()}{thing[1:]} is {color}."


def task_small_talk(rng: random.Random) -> tuple[str, str]:
    return rng.choice(SMALL_TALK)


TASKS: list[Task] = [
    task_add,
    task_subtract,
    task_compare,
    task_spell,
    task_reverse,
    task_count_letters,
    task_opposite,
    task_capital,
    task_day,
    task_minutes,
    task_color,
    task_small_talk,
]


def make_conversation(rng: random.Random, with_system: bool, multi_turn: bool) -> list[Message]:
    """Build one conversation, retrying until it fits within MAX_CHARS."""
    while True:
        messages: list[Message] = []
        if with_system:
            messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        num_exchanges = rng.choice([2, 3]) if multi_turn else 1
        for _ in range(num_exchanges):
            question, answer = rng.choice(TASKS)(rng)
            messages.append({"role": "user", "content": question})
            messages.append({"role": "assistant", "content": answer})
        if sum(len(m["content"]) for m in messages) < MAX_CHARS:
            return messages


def write_conversations(path: Path, seed: int, n: int, n_system: int, n_multi: int) -> None:
    """Write `n` conversations to `path`: `n_system` open with a system message and
    `n_multi` have several exchanges, in an order fixed by `seed`."""
    rng = random.Random(seed)
    flags = [(i < n_system, False) for i in range(n)]
    multi_idx = rng.sample(range(n), n_multi)
    for i in multi_idx:
        flags[i] = (flags[i][0], True)
    rng.shuffle(flags)

    lines = []
    for with_system, multi_turn in flags:
        messages = make_conversation(rng, with_system, multi_turn)
        lines.append(json.dumps({"messages": messages}, ensure_ascii=False))

    with path.open("w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {len(lines)} conversations to {path}")


def main() -> None:
    write_conversations(OUTPUT_PATH, 0, NUM_CONVERSATIONS, NUM_WITH_SYSTEM, NUM_MULTI_TURN)
    # Held-out conversations for val loss, drawn with another seed.
    write_conversations(VAL_OUTPUT_PATH, 1, NUM_VAL, NUM_VAL // 4, NUM_VAL * 3 // 10)


if __name__ == "__main__":
    main()
