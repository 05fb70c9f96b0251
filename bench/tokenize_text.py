"""Tokenizing speed: xinslm's tokenize-text path beside the seed's per-line encode loop.

    python bench/tokenize_text.py [--mb 100] [--tokenizers byte gpt2 cl100k_base bpe]
                             [--modes naive one-thread xinslm]

Builds a text of at least --mb megabytes by repeating tinyshakespeare.txt (from
$XINSLM_SHARED_DATA, default ../shared/data), then, each in a fresh process so peak memory is
its own, tokenizes it (naive) the seed's way: every line through encode() into one Python
list, then a numpy array; (xinslm) through xinslm.tokenize_text: chunked reads, pieces
encoded on a thread per CPU straight into uint32 buffers, written to the memmap as they come;
(one-thread) the same on one thread, to show what the threads add. Prints MB/s, the speedup
over naive, and each run's peak RSS. `bpe` is a 4096-token BPE trained on the same text first.
Needs only numpy, tiktoken and (for bpe) rustbpe. `--modes xinslm --mb 1100` is the
flat-memory run on a file over 1 GB.
"""

from __future__ import annotations

import argparse
import dataclasses
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

    from xinslm import tokenizer as tokenizer_module
    from xinslm.config import load_params
    from xinslm.tokenize_text import tokenize_text

    if mode == "one-thread":
        tokenizer_module.ENCODE_THREADS = 1
    tokenizer = load(name, work)
    start = time.perf_counter()
    if mode == "naive":
        ids: list[int] = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                ids.extend(tokenizer.encode(line))
        count = len(np.asarray(ids, dtype=np.uint32))
    else:  # one file, in this process (a fresh store: nothing reused)
        (text,) = load_params(ROOT / "params.yaml", "text")
        text = dataclasses.replace(text, input=str(path), val_fraction=0.1, chunk_bytes=4 << 20)
        out = work / f"tokens-{mode}-{name}"
        meta = tokenize_text(text, tokenizer, out, out.with_name(f"{out.name}-store")).meta
        count = sum(meta["tokens"].values())
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "tokens": count, "peak_rss_mb": peak_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100, help="size of the text to tokenize")
    parser.add_argument("--tokenizers", nargs="+", default=["byte", "gpt2", "cl100k_base", "bpe"])
    parser.add_argument("--modes", nargs="+", default=["naive", "one-thread", "xinslm"])
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
        f"{'tokenizer':<12} {'naive MB/s':>11} {'1-thread MB/s':>14} {'xinslm MB/s':>12} "
        f"{'speedup':>8} {'RSS naive MB':>12} {'RSS xinslm MB':>13}"
    )
    for name in args.tokenizers:
        runs = {}
        for mode in args.modes:
            cmd = [sys.executable, __file__, "--one", mode, name, str(path), str(work)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            runs[mode] = json.loads(out)
        speed = {m: size_mb / r["seconds"] for m, r in runs.items()}
        rss = {m: r["peak_rss_mb"] for m, r in runs.items()}
        ratio = speed["xinslm"] / speed["naive"] if {"naive", "xinslm"} <= set(runs) else None

        def cell(value, width, fmt):
            return f"{'-' if value is None else format(value, fmt):>{width}}"

        print(
            f"{name:<12} {cell(speed.get('naive'), 11, '.1f')} "
            f"{cell(speed.get('one-thread'), 14, '.1f')} {cell(speed.get('xinslm'), 12, '.1f')} "
            f"{'-' if ratio is None else f'{ratio:.1f}x':>8} {cell(rss.get('naive'), 12, '.0f')} "
            f"{cell(rss.get('xinslm'), 13, '.0f')}"
        )


if __name__ == "__main__":
    main()
