"""Tokenizing speed: xinslm's tokenize-text path beside the seed's per-line encode loop.

    python bench/tokenize.py [--mb 100] [--tokenizers byte gpt2 cl100k_base bpe]

Builds a text of at least --mb megabytes by repeating tinyshakespeare.txt (from
$XINSLM_SHARED_DATA, default ../shared/data), then, each in a fresh process so peak memory is
its own, tokenizes it (a) the seed's way: every line through encode() into one Python list,
(b) through xinslm.text.tokenize_text (chunked reads, batched multi-threaded encoding, straight
into the memmap). Prints MB/s, the speedup and each run's peak RSS. `bpe` is a 4096-token BPE
trained on the same text first. Needs only numpy, tiktoken and (for bpe) rustbpe.
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


def load(name: str, work: Path):
    from xinslm.tokenizer import get_tokenizer

    return get_tokenizer(name, SHARED / "tiktoken", bpe_dir=work / "bpe")


def run_one(mode: str, name: str, path: Path, work: Path) -> dict:
    """One measurement in this process: seconds and peak RSS."""
    import numpy as np

    from xinslm.text import tokenize_text

    tokenizer = load(name, work)
    start = time.perf_counter()
    if mode == "naive":
        ids: list[int] = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                ids.extend(tokenizer.encode(line))
        count = len(np.asarray(ids, dtype=np.uint32))
    else:
        meta = tokenize_text(path, tokenizer, work / f"tokens-{name}", val_fraction=0.1)
        count = sum(a["shape"][0] for a in meta["arrays"].values())
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "tokens": count, "peak_rss_mb": peak_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100, help="size of the text to tokenize")
    parser.add_argument("--tokenizers", nargs="+", default=["byte", "gpt2", "cl100k_base", "bpe"])
    parser.add_argument("--one", nargs=4, help=argparse.SUPPRESS)  # mode name path work
    args = parser.parse_args()
    if args.one:
        mode, name, path, work = args.one
        print(json.dumps(run_one(mode, name, Path(path), Path(work))))
        return

    source = SHARED / "tinyshakespeare.txt"
    if not source.is_file():
        sys.exit(f"{source} not found: set XINSLM_SHARED_DATA")
    work = Path(tempfile.mkdtemp(prefix="xinslm-bench-"))
    text = source.read_text()
    path = work / "text.txt"
    with open(path, "w") as f:
        for _ in range(-(-args.mb * 2**20 // len(text))):
            f.write(text)
    size_mb = path.stat().st_size / 2**20
    if "bpe" in args.tokenizers:
        from xinslm.bpe import train_bpe

        train_bpe(iter([text]), 4096, work / "bpe")

    print(f"text: {size_mb:.0f} MB ({source.name} repeated), {os.cpu_count()} CPUs")
    print(
        f"{'tokenizer':<12} {'per-line MB/s':>14} {'xinslm MB/s':>12} {'speedup':>8} "
        f"{'RSS per-line':>13} {'RSS xinslm':>11}"
    )
    for name in args.tokenizers:
        runs = {}
        for mode in ("naive", "xinslm"):
            cmd = [sys.executable, __file__, "--one", mode, name, str(path), str(work)]
            runs[mode] = json.loads(
                subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            )
        naive, fast = (size_mb / runs[m]["seconds"] for m in ("naive", "xinslm"))
        print(
            f"{name:<12} {naive:>14.1f} {fast:>12.1f} {fast / naive:>7.1f}x "
            f"{runs['naive']['peak_rss_mb']:>10.0f} MB {runs['xinslm']['peak_rss_mb']:>8.0f} MB"
        )


if __name__ == "__main__":
    main()
