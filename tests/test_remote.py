"""Sharing artifacts through a DVC remote, and a queued sweep, as the README shows them: one
clone trains and `dvc push`es to a local-directory remote; a fresh clone `dvc pull`s and its
`dvc repro` has nothing to run. Then two queued experiments run through `dvc queue start`."""

from __future__ import annotations

import csv
import io
import re
import time
from pathlib import Path

import pytest
import yaml
from conftest import ALL_STAGES, copy_repo, run


@pytest.fixture(scope="module")
def trained(trained_repo: Path, tmp_path_factory) -> Path:
    """A copy of the session's repo with tiny params, the whole pipeline run and committed."""
    repo = copy_repo(trained_repo, tmp_path_factory.mktemp("remote") / "trained")
    # Queued experiments commit from a background worker: give them an identity on bare CI too.
    run(["git", "config", "user.name", "xinslm tests"], repo)
    run(["git", "config", "user.email", "tests@xinslm.invalid"], repo)
    return repo


def out_files(repo: Path) -> list[str]:
    """Every file under the outputs dvc.lock records (checkpoints, data/*, eval/samples.json)."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    outs = [repo / o["path"] for stage in lock["stages"].values() for o in stage.get("outs", [])]
    files = [f for out in outs for f in ([out] if out.is_file() else out.rglob("*"))]
    return sorted(str(f.relative_to(repo)) for f in files if f.is_file())


def snapshot(repo: Path, names: list[str]) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of each file: a stage that ran writes a new file and renames it in place."""
    return {n: ((repo / n).stat().st_ino, (repo / n).stat().st_mtime_ns) for n in names}


def wait_for_queue(repo: Path, timeout: float) -> str:
    """Poll `dvc queue status` until no task is queued or running; return the last status."""
    deadline = time.monotonic() + timeout
    while True:
        status = run(["dvc", "queue", "status"], repo).stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            return status
        assert time.monotonic() < deadline, f"the queue did not finish in {timeout} s:\n{status}"
        time.sleep(2)


def test_pulled_clone_has_identical_outputs_and_nothing_to_run(
    trained: Path, tmp_path: Path
) -> None:
    remote = tmp_path / "dvc-remote"
    run(["dvc", "remote", "add", "-d", "team", str(remote)], trained)
    run(["git", "commit", "-qm", "team remote", ".dvc/config"], trained)
    pushed = run(["dvc", "push"], trained).stdout
    assert re.search(r"\d+ files? pushed", pushed), pushed
    assert any(p.is_file() for p in (remote / "files" / "md5").rglob("*"))

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(trained), str(clone)], tmp_path)
    # Nothing of the first clone's cache came along: what follows can only come from the remote.
    assert not (clone / ".dvc" / "cache").exists()
    assert not (clone / "checkpoints" / "base.pt").exists()
    assert run(["dvc", "status", "--json"], clone).stdout.strip() != "{}"

    pulled = run(["dvc", "pull"], clone).stdout
    assert re.search(r"\d+ files fetched", pulled), pulled
    names = out_files(trained)
    assert {"checkpoints/base.pt", "checkpoints/chat.pt", "data/tokens/meta.json"} <= set(names)
    assert out_files(clone) == names
    for name in names:
        assert (clone / name).read_bytes() == (trained / name).read_bytes(), name
    assert not (clone / ".dvc" / "cache" / "runs").exists()  # no run cache to restore from

    before = snapshot(clone, names)
    out = run(["dvc", "repro"], clone).stdout
    assert "Data and pipelines are up to date." in out
    assert "Running stage" not in out and "is cached" not in out, out
    assert set(re.findall(r"Stage '([^']+)' didn't change, skipping", out)) == ALL_STAGES
    assert snapshot(clone, names) == before
    assert run(["dvc", "status", "--json"], clone).stdout.strip() == "{}"


def test_queued_sweep_runs_and_shows_sorted(trained: Path) -> None:
    lock = (trained / "dvc.lock").read_text()
    # A queued experiment runs the repo as it was when queued, xinslm/ included (the stages
    # import the copy beside them, not the installed package): an edit made before queueing
    # runs in the experiments, though the workspace drops it before the queue starts.
    # xinslm/model.py: imported by all three stages the experiments run.
    module = trained / "xinslm" / "model.py"
    original = module.read_text()
    module.write_text(original + '\nprint("model.py as queued")\n')
    queued = run(
        ["dvc", "exp", "run", "--queue", "-S", "pretrain.lr=0.001,0.01", "-n", "lr"], trained
    ).stdout
    module.write_text(original)
    assert re.findall(r"Queued experiment '([^']+)'", queued) == ["lr-1", "lr-2"]
    run(["dvc", "queue", "start"], trained)  # one background worker, as the README says
    try:
        status = wait_for_queue(trained, timeout=300)
    finally:
        run(["dvc", "queue", "stop", "--kill"], trained, check=False)
    assert status.count("Success") == 2, status
    for name in ("lr-1", "lr-2"):
        log = run(["dvc", "queue", "logs", name], trained).stdout
        # Each experiment starts from the committed outputs: only what reads pretrain.lr runs.
        ran = set(re.findall(r"Running stage '([^']+)'", log))
        assert ran == {"pretrain", "sft", "export", "evaluate"}, log
        assert log.count("model.py as queued") == len(ran), log  # once in each stage

    def shown(order: str) -> list[dict[str, str]]:
        table = run(
            ["dvc", "exp", "show", "--csv", "--sort-by", "base.val_bpb", "--sort-order", order],
            trained,
        ).stdout
        # The workspace and the baseline commit (no name), then the commit's experiments.
        return [row for row in csv.DictReader(io.StringIO(table)) if row["Experiment"]]

    rows = shown("asc")
    assert {row["Experiment"]: row["pretrain.lr"] for row in rows} == {
        "lr-1": "0.001",
        "lr-2": "0.01",
    }
    bpbs = [float(row["base.val_bpb"]) for row in rows]
    assert bpbs[0] < bpbs[1]  # different learning rates, different models, sorted
    assert [row["Experiment"] for row in shown("desc")] == [row["Experiment"] for row in rows][::-1]
    # The workspace is untouched: same lock file, nothing to run.
    assert (trained / "dvc.lock").read_text() == lock
    assert run(["dvc", "status", "--json"], trained).stdout.strip() == "{}"
