"""Data at scale (issue 21): tokenize-text and pack on a corpus of >= 10 GB in >= 100 shards,
in each format, through `dvc repro` in a scratch copy of this project.

    python bench/data_scale.py [--gb 10] [--shards 160] [--formats txt jsonl parquet]
                               [--tokenizer byte] [--direct] [--work DIR]

The corpus comes from the shared data ($XINSLM_SHARED_DATA, default ../shared/data):
tinyshakespeare.txt's paragraphs and GSM8K's problems, drawn into documents of 3-30 of them
under a numbered heading (so no two are the same), seeded per shard, about --gb GB of UTF-8
text in all. A format's shards: a .txt file each (one document: its records joined), or
.jsonl / .parquet records (`text` field; Parquet zstd, 1024 rows per row group). One format
at a time (`file`: the txt shards joined into one file, split by position), its files
deleted before the next: a copy of this project's files with text.input
pointing at the corpus, `dvc repro pack` (train-tokenizer, tokenize-text, pack), then one shard
added and `dvc repro pack` again. --direct calls the library instead of dvc (for a machine
without dvc), with no cache.

Columns: text GB; the run's wall time and MB/s of text over it; tokenize-text's own seconds,
and DVC's seconds after it (hashing and caching data/tokens); the peak of the summed anonymous
memory (RssAnon) of all the run's processes, sampled every 0.1 s (and the largest RSS of any one
of them, from the kernel's rusage); disk used by the workspace (data/), DVC's cache
and both together, by `du` in one call, so hardlinks count once; that total over the token
stream's bytes; the rerun after adding a shard.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("XINSLM_SHARED_DATA", ROOT.parent / "shared" / "data"))
GB = 1e9


# --- the corpus ---------------------------------------------------------------------------


def paragraphs() -> list[str]:
    text = (SHARED / "tinyshakespeare.txt").read_text()
    out = [p.strip() for p in text.split("\n\n") if p.strip()]
    for line in (SHARED / "gsm8k-train.jsonl").open():
        messages = json.loads(line)["messages"]
        out.append(f"{messages[0]['content']}\n{messages[1]['content']}")
    return out


def documents(shard: int, size: int, base: list[str]) -> list[str]:
    """About `size` bytes of documents for shard number `shard`, the same on every call."""
    rng, docs, total = random.Random(shard), [], 0
    while total < size:
        start, count = rng.randrange(len(base)), rng.randint(3, 30)
        doc = f"Document {shard}.{len(docs)}\n\n" + "\n\n".join(base[start : start + count]) + "\n"
        docs.append(doc)
        total += len(doc.encode())
    return docs


def write_shard(job: tuple[str, int, int, Path]) -> int:
    """Write shard number `index` in format `kind` to `folder`; its text bytes."""
    kind, index, size, folder = job
    docs = documents(index, size, paragraphs())
    path = folder / f"part-{index:05}.{kind}"
    if kind == "txt":
        path.write_text("".join(docs))
    elif kind == "jsonl":
        with open(path, "w") as f:
            f.writelines(json.dumps({"id": i, "text": d}) + "\n" for i, d in enumerate(docs))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({"id": list(range(len(docs))), "text": docs})
        pq.write_table(table, path, row_group_size=1024, compression="zstd")
    return sum(len(d.encode()) for d in docs)


def build_corpus(kind: str, folder: Path, shards: int, gb: float) -> tuple[Path, int]:
    """The corpus's text.input and its text bytes. Kind `file`: the txt shards joined into
    one file, split by position."""
    folder.mkdir(parents=True)
    shard_kind, size = "txt" if kind == "file" else kind, int(gb * GB / shards)
    jobs = [(shard_kind, i, size, folder) for i in range(shards)]
    with ProcessPoolExecutor() as pool:
        text_bytes = sum(pool.map(write_shard, jobs))
    if kind != "file":
        return folder, text_bytes
    whole = folder.with_suffix(".txt")
    with open(whole, "wb") as out:
        for part in sorted(folder.iterdir()):
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 24)
            part.unlink()
    folder.rmdir()
    return whole, text_bytes


# --- measuring ----------------------------------------------------------------------------


class PeakMemory:
    """Samples the summed RssAnon of a process and all its descendants, every 0.1 s."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _tree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
        tree, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo.extend(children.get(pid, []))
        return tree

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            total = 0
            for pid in self._tree():
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                found = re.search(r"RssAnon:\s+(\d+) kB", status)
                total += int(found.group(1)) * 1024 if found else 0
            self.peak = max(self.peak, total)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def timed(cmd: list[str], cwd: Path, env: dict) -> dict:
    """Run cmd; its wall time, peak memory, output and when each output line came."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    memory = PeakMemory(proc.pid)
    lines = [(time.perf_counter() - start, line.rstrip()) for line in proc.stdout]
    _, status, usage = os.wait4(proc.pid, 0)  # its rusage: the largest RSS of it or a child
    proc.returncode = os.waitstatus_to_exitcode(status)
    run = {"seconds": time.perf_counter() - start, "peak_anon": memory.stop(), "lines": lines}
    run["max_rss"] = usage.ru_maxrss * 1024
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n" + "\n".join(line for _, line in lines))
    return run


def at(lines: list, pattern: str) -> float:
    return next(t for t, line in lines if re.search(pattern, line))


def du(*paths: Path) -> int:
    """Bytes on disk of paths together; a file linked twice counts once."""
    existing = [str(p) for p in paths if p.exists()]
    if not existing:
        return 0
    out = subprocess.run(["du", "-s", "-c", "-B1", *existing], capture_output=True, text=True)
    return int(out.stdout.splitlines()[-1].split()[0])


# --- the runs -----------------------------------------------------------------------------


def project(work: Path, corpus: Path, tokenizer: str, direct: bool) -> tuple[Path, dict]:
    """A copy of this project's files, nothing run, text.input the corpus; a git repo for dvc
    (with --direct: params.yaml and the library only)."""
    import yaml

    repo = work / "project"
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PYTHONPATH=str(repo))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    if direct:
        shutil.copytree(ROOT / "xinslm", repo / "xinslm")
        shutil.copy(ROOT / "params.yaml", repo / "params.yaml")
    else:
        files = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        for name in files:
            if (ROOT / name).is_file():
                (repo / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, repo / name)
        (repo / "dvc.lock").unlink(missing_ok=True)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["text"]["input"] = str(corpus)
    params["tokenizer"]["name"] = tokenizer
    params["tokenizer"]["encodings_dir"] = str(SHARED / "tiktoken")
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if not direct:
        for who in ("AUTHOR", "COMMITTER"):
            env.update({f"GIT_{who}_NAME": "bench", f"GIT_{who}_EMAIL": "bench@x.invalid"})
        for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "b"]):
            subprocess.run(cmd, cwd=repo, env=env, check=True)
    return repo, env


DIRECT = """
import sys, time
from xinslm.config import load_params
from xinslm.pack import pack_blocks
from xinslm.tokenize_text import tokenize_text
from xinslm.tokenizer import get_tokenizer
tok, text, model = load_params("params.yaml", "tokenizer", "text", "model")
tokenizer = get_tokenizer(tok.name, tok.encodings_dir)
done = tokenize_text(text, tokenizer, "data/tokens", "data/token-store")
print(f"tokenize-text: tokenized {len(done.tokenized)}, reused {len(done.reused)}", flush=True)
pack_blocks("data/tokens", "data/blocks", model.context_len)
print("pack: done", flush=True)
"""


def run_format(args: argparse.Namespace, kind: str, work: Path) -> dict:
    start = time.perf_counter()
    corpus, text_bytes = build_corpus(kind, work / f"corpus-{kind}", args.shards, args.gb)
    built = time.perf_counter() - start
    repo, env = project(work, corpus, args.tokenizer, args.direct)
    cmd = [sys.executable, "-c", DIRECT] if args.direct else ["dvc", "repro", "pack"]
    first = timed(cmd, repo, env)
    lines = first["lines"]
    tokenize_start = 0.0 if args.direct else at(lines, r"Running stage 'tokenize-text'")
    tokenize_end = at(lines, r"tokenize-text: .*tokenized")
    after = at(lines, r"pack: ") - tokenize_end if not args.direct else 0.0
    meta = json.loads((repo / "data/tokens/meta.json").read_text())
    itemsize = 2 if meta["dtype"] == "uint16" else 4
    stream = sum(meta["tokens"].values()) * itemsize
    data, cache = repo / "data", repo / ".dvc" / "cache"
    disk = {"workspace": du(data), "cache": du(cache), "both": du(data, cache)}
    rerun, added = {"seconds": float("nan")}, ["-"]
    if kind != "file":  # one shard more, and the rerun
        write_shard((kind, args.shards, int(args.gb * GB / args.shards), corpus))
        rerun = timed(cmd, repo, env)
        added = [re.search(r"tokenized \d+.*reused \d+", line) for _, line in rerun["lines"]]
        added = [found.group(0) for found in added if found]
    row = {
        "format": kind, "shards": args.shards, "text_gb": text_bytes / GB, "built_s": built,
        "wall_s": first["seconds"], "mb_per_s": text_bytes / 1e6 / first["seconds"],
        "tokenize_s": tokenize_end - tokenize_start, "dvc_after_s": after,
        "peak_anon_mb": first["peak_anon"] / 1e6, "max_rss_mb": first["max_rss"] / 1e6,
        "stream_gb": stream / GB,
        **{f"disk_{k}_gb": v / GB for k, v in disk.items()}, "ratio": disk["both"] / stream,
        "rerun_s": rerun["seconds"], "rerun": added[0] if added else "",
    }  # fmt: skip
    shutil.rmtree(repo, ignore_errors=True)
    shutil.rmtree(corpus, ignore_errors=True) if corpus.is_dir() else corpus.unlink()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=10.0, help="GB of text per format")
    parser.add_argument("--shards", type=int, default=160)
    parser.add_argument(
        "--formats", nargs="+", default=["txt", "jsonl", "parquet"],
        help="txt, jsonl, parquet, or file: the txt shards joined into one file",
    )  # fmt: skip
    parser.add_argument("--tokenizer", default="byte", help="params.yaml's default: byte")
    parser.add_argument("--direct", action="store_true", help="the library, not dvc repro")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a new temp dir)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="xinslm-data-scale-", dir=args.work))
    how = "the library" if args.direct else "dvc repro"
    print(f"{os.cpu_count()} CPUs, {args.gb} GB a format, {args.shards} shards, {how}, in {work}")
    rows = []
    try:
        for kind in args.formats:
            rows.append(run_format(args, kind, work))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    head = (
        "| format | shards | text GB | wall s | MB/s | tokenize-text s | DVC after s "
        "| peak anon MB (one process) | workspace GB | cache GB | both GB | / stream "
        "| +1 shard: rerun s |"
    )
    print("\n" + head + "\n" + "|---" * head.count(" | ") + "|---|")
    for r in rows:
        print(
            f"| {r['format']} | {r['shards']} | {r['text_gb']:.2f} | {r['wall_s']:.0f} | "
            f"{r['mb_per_s']:.0f} | {r['tokenize_s']:.0f} | {r['dvc_after_s']:.0f} | "
            f"{r['peak_anon_mb']:.0f} ({r['max_rss_mb']:.0f}) | {r['disk_workspace_gb']:.2f} | "
            f"{r['disk_cache_gb']:.2f} | "
            f"{r['disk_both_gb']:.2f} | {r['ratio']:.3f} | {r['rerun_s']:.1f} ({r['rerun']}) |"
        )


if __name__ == "__main__":
    main()
