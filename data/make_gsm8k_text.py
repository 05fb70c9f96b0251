"""GSM8K's training problems as plain text, the pretraining corpus of the README's GPU recipe
(SFT then trains on the same problems as conversations).

    python data/make_gsm8k_text.py      # -> data/gsm8k-train.txt (not committed)

Reads gsm8k-train.jsonl from $XINSLM_SHARED_DATA (default ../shared/data), our chat format,
and writes each problem as "Question: ...\\nAnswer: ...\\n\\n" with the <<expr=result>>
annotations taken out, so the text reads as ordinary worked solutions ("48/2 = 24 clips");
SFT teaches the calculator calls. GSM8K is MIT-licensed; the derived file stays out of git.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("XINSLM_SHARED_DATA", HERE.parent.parent / "shared" / "data"))
SOURCE = SHARED / "gsm8k-train.jsonl"
OUTPUT = HERE / "gsm8k-train.txt"
ANNOTATION = re.compile(r"<<[^<>]*>>")


def problem_text(record: dict) -> str:
    messages = record["messages"]
    question = next(m["content"] for m in messages if m["role"] == "user")
    answer = messages[-1]["content"]
    return f"Question: {question}\nAnswer: {ANNOTATION.sub('', answer)}\n\n"


def main() -> None:
    if not SOURCE.is_file():
        raise SystemExit(f"{SOURCE}: not found (set XINSLM_SHARED_DATA to the shared data folder)")
    with open(SOURCE, encoding="utf-8") as f:
        texts = [problem_text(json.loads(line)) for line in f if line.strip()]
    OUTPUT.write_text("".join(texts), encoding="utf-8")
    print(f"{OUTPUT}: {len(texts):,} problems, {OUTPUT.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
