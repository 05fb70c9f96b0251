"""tokenize-text under `dvc repro` on a folder of shards: a changed or added shard is the only
one tokenized again, and each shard's tokens are on disk once (data/tokens, the stage's store
and DVC's cache hold hardlinks of one file: .dvc/config's cache.type)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import copy_working_tree, edit_params, run


def write_shard(path: Path, docs: list[str]) -> None:
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))


def project(repo: Path) -> Path:
    """The working copy's tracked and new files at `repo`, nothing run, text.input a folder of
    5 JSONL shards; a git repo (DVC's cache and config come with .dvc/)."""
    copy_working_tree(repo)
    (repo / "dvc.lock").unlink(missing_ok=True)
    (repo / "corpus").mkdir()
    for i in range(5):
        write_shard(
            repo / "corpus" / f"part-{i}.jsonl", [f"shard {i}, text {j}\n" for j in range(40)]
        )
    edit_params(repo, {"text": {"input": "corpus", "workers": 0}, "model": {"context_len": 32}})
    run(["git", "init", "-q"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "init"], repo)
    return repo


def inodes(folder: Path) -> set[int]:
    return {p.stat().st_ino for p in folder.rglob("*") if p.is_file()}


def nonempty(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.stat().st_size]


def test_dvc_repro_tokenizes_the_changed_shard_only_and_keeps_one_copy(tmp_path: Path) -> None:
    repo = project(tmp_path / "repo")
    out = run(["dvc", "repro", "pack"], repo).stdout
    assert "tokenize-text: 5 shard(s): tokenized 5 (" in out

    # One copy: each shard's file in data/tokens is the store's and the cache's, one inode.
    tokens, store = repo / "data" / "tokens" / "shards", repo / "data" / "token-store"
    for path in nonempty(tokens):  # (DVC copies an empty file rather than link it)
        assert path.stat().st_nlink == 3, path.name  # data/tokens, the store, DVC's cache
        assert (store / path.name).stat().st_ino == path.stat().st_ino
    assert {p.stat().st_ino for p in nonempty(tokens)} <= inodes(repo / ".dvc" / "cache")
    assert {p.name for p in (repo / "data" / "blocks").iterdir()} == {
        "meta.json",
        "token_bytes.bin",
    }

    write_shard(repo / "corpus" / "part-2.jsonl", ["changed\n"] * 40)
    out = run(["dvc", "repro", "pack"], repo).stdout
    assert "tokenize-text: 5 shard(s): tokenized 1 (part-2.jsonl), reused 4, dropped 1" in out
    assert "Running stage 'pack'" in out
    write_shard(repo / "corpus" / "part-5.jsonl", ["a new shard\n"] * 40)
    out = run(["dvc", "repro", "pack"], repo).stdout
    assert "tokenize-text: 6 shard(s): tokenized 1 (part-5.jsonl), reused 5, dropped 0" in out
    assert all(path.stat().st_nlink == 3 for path in nonempty(tokens))
    assert "Data and pipelines are up to date." in run(["dvc", "repro", "pack"], repo).stdout
