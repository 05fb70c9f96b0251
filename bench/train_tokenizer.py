"""Which BPE trainer: rustbpe (nanochat's) beside HuggingFace `tokenizers`, on the same text.

    python bench/train_tokenizer.py [--vocab 4096 16384] [--mb 0]

Both learn a byte-level BPE with xinslm's GPT-4-style split pattern (xinslm.bpe.SPLIT_PATTERN)
from the first 90% of tinyshakespeare.txt (from $XINSLM_SHARED_DATA, default ../shared/data);
`--mb N` adds N megabytes of GSM8K questions and answers from the same folder, for a bigger,
more varied text. Each training runs in a fresh process, so its peak RSS is its own. Prints
seconds, peak RSS and the bytes per token each gives on the held-out last 10% of Shakespeare.
The rustbpe tokenizer encodes through tiktoken, as xinslm does; the HuggingFace one through
its own encoder. Needs rustbpe, tiktoken and (for its column) `pip install tokenizers`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("XINSLM_SHARED_DATA", ROOT.parent / "shared" / "data"))


def corpus(extra_mb: int) -> tuple[list[str], str]:
    """Training texts (in pieces of about 1 MB) and the held-out Shakespeare text."""
    text = (SHARED / "tinyshakespeare.txt").read_text()
    cut = text.index("\n", int(len(text) * 0.9)) + 1
    train, val = [text[:cut]], text[cut:]
    left = extra_mb << 20
    with open(SHARED / "gsm8k-train.jsonl") as f:
        piece: list[str] = []
        for line in f:
            if left <= 0:
                break
            record = json.loads(line)
            for message in record.get("messages", []):
                piece.append(message["content"] + "\n")
                left -= len(piece[-1])
            if sum(map(len, piece)) > 1 << 20:
                train.append("".join(piece))
                piece = []
        train.append("".join(piece))
    return [t for t in train if t], val


def train_rustbpe(texts: list[str], vocab_size: int, val: str) -> int:
    from xinslm.bpe import train_bpe
    from xinslm.tokenizer import TiktokenTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        train_bpe(iter(texts), vocab_size, tmp)
        return len(TiktokenTokenizer.trained(tmp).encode(val))


def train_hf(texts: list[str], vocab_size: int, val: str) -> int:
    # The setup nanochat compared rustbpe against: split by the pattern, then byte-level.
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from xinslm.bpe import SPLIT_PATTERN

    tokenizer = Tokenizer(models.BPE(byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(pattern=Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        show_progress=False,
        min_frequency=0,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(iter(texts), trainer)
    assert tokenizer.get_vocab_size() == vocab_size, tokenizer.get_vocab_size()
    return len(tokenizer.encode(val).ids)


def run_one(trainer: str, vocab_size: int, extra_mb: int) -> dict:
    texts, val = corpus(extra_mb)
    train = {"rustbpe": train_rustbpe, "tokenizers": train_hf}[trainer]
    start = time.perf_counter()
    tokens = train(texts, vocab_size, val)
    return {
        "seconds": time.perf_counter() - start,  # training plus one encode of the val text
        "bytes_per_token": len(val.encode()) / tokens,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "train_mb": sum(len(t.encode()) for t in texts) / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--mb", type=int, default=0, help="megabytes of GSM8K text to add")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # trainer vocab mb
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), int(args.one[2]))))
        return
    if not (SHARED / "tinyshakespeare.txt").is_file():
        sys.exit(f"{SHARED / 'tinyshakespeare.txt'} not found: set XINSLM_SHARED_DATA")
    trainers = ["rustbpe", "tokenizers"]
    try:
        import tokenizers  # noqa: F401
    except ImportError:
        print("HuggingFace tokenizers is not installed (pip install tokenizers): rustbpe only")
        trainers = ["rustbpe"]

    print(f"{'trainer':<11} {'vocab':>6} {'text MB':>8} {'seconds':>8}", end=" ")
    print(f"{'RSS MB':>7} {'val B/tok':>9}")
    for vocab_size in args.vocab:
        for trainer in trainers:
            cmd = [sys.executable, __file__, "--one", trainer, str(vocab_size), str(args.mb)]
            run = json.loads(subprocess.run(cmd, check=True, capture_output=True).stdout)
            print(
                f"{trainer:<11} {vocab_size:>6} {run['train_mb']:>8.1f} {run['seconds']:>8.2f} "
                f"{run['peak_rss_mb']:>7.0f} {run['bytes_per_token']:>9.3f}"
            )


if __name__ == "__main__":
    main()
