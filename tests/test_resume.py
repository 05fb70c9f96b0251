"""Crash-safe exact resume: a stage killed mid-run and run again ends with the same bits as one
that was never interrupted; SIGTERM saves where it stopped; other settings are refused."""

from __future__ import annotations

import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "model": {"context_len": 32, "n_layer": 2, "n_head": 2, "n_kv_head": 1, "n_embd": 32},
    "pretrain": {
        "max_steps": 400,
        "batch_size": 8,
        "warmup_steps": 10,
        "log_every": 5,
        "eval_every": 100,
        "eval_batches": 2,
        "checkpoint_every": 10,
        "device": "cpu",
    },
    "sft": {
        "max_steps": 300,
        "batch_size": 8,
        "log_every": 5,
        "eval_every": 100,
        "eval_batches": 2,
        "checkpoint_every": 10,
        "device": "cpu",
    },
}
RESUME = {"pretrain": "checkpoints/resume/pretrain.pt", "sft": "checkpoints/resume/sft.pt"}
OUT = {"pretrain": "checkpoints/base.pt", "sft": "checkpoints/chat.pt"}


def stage_cmd(name: str) -> list[str]:
    return [sys.executable, str(ROOT / "stages" / f"{name}.py")]


def run_stage(name: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(stage_cmd(name), cwd=cwd, capture_output=True, text=True)


def set_params(cwd: Path, section: str, **values) -> None:
    params = yaml.safe_load((cwd / "params.yaml").read_text())
    params[section].update(values)
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))


def scratch_inputs(work: Path) -> None:
    """A new folder `work` holding params.yaml and the bundled data, without stage outputs:
    the stage scripts run there as in the repo."""
    work.mkdir()
    shutil.copy(ROOT / "params.yaml", work / "params.yaml")
    shutil.copytree(
        ROOT / "data",
        work / "data",
        ignore=shutil.ignore_patterns("tokens", "blocks", "chat", "tokenizer"),
    )


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """Tokenized, packed and rendered bundled data, tiny params, and an uninterrupted run of
    pretrain and sft (the reference)."""
    work = tmp_path_factory.mktemp("resume") / "ref"
    scratch_inputs(work)
    for section, values in TINY.items():
        set_params(work, section, **values)
    for stage in ("tokenize-text", "pack", "render-chat", "pretrain", "sft"):
        proc = run_stage(stage, work)
        assert proc.returncode == 0, proc.stderr
    assert not (work / "checkpoints" / "resume").exists() or not any(
        (work / "checkpoints" / "resume").iterdir()
    )
    return work


def fresh_copy(prepared: Path, name: str, stage: str) -> Path:
    """The prepared folder without the outputs of `stage` (and, for pretrain, of sft)."""
    work = prepared.parent / name
    shutil.copytree(prepared, work)
    (work / OUT[stage]).unlink()
    return work


def start_and_wait_for_resume(stage: str, work: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        stage_cmd(stage), cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    resume = work / RESUME[stage]
    deadline = time.monotonic() + 120
    while not resume.exists():
        assert proc.poll() is None, f"{stage} ended before its first resume checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    return proc


def assert_same_final_checkpoint(a: Path, b: Path) -> None:
    first = torch.load(a, weights_only=True)
    second = torch.load(b, weights_only=True)
    assert first["model"].keys() == second["model"].keys()
    for key, tensor in first["model"].items():
        assert torch.equal(tensor, second["model"][key]), key
    assert first["summary"] == second["summary"]
    assert a.read_bytes() == b.read_bytes()  # optimizer state and all


@pytest.mark.parametrize("stage", ["pretrain", "sft"])
def test_sigkill_then_rerun_ends_bitwise_identical(prepared: Path, stage: str) -> None:
    work = fresh_copy(prepared, f"kill-{stage}", stage)
    proc = start_and_wait_for_resume(stage, work)
    time.sleep(random.uniform(0.0, 0.3))  # a random step after the first resume checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the stage finished before it could be killed"
    assert not (work / OUT[stage]).exists()
    killed_at = torch.load(work / RESUME[stage], weights_only=True)["step"]
    assert 10 <= killed_at < TINY[stage]["max_steps"]

    rerun = run_stage(stage, work)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming from {RESUME[stage]} at step {killed_at}" in rerun.stdout
    assert not (work / RESUME[stage]).exists()  # a completed stage removes it
    assert_same_final_checkpoint(work / OUT[stage], prepared / OUT[stage])
    assert [p.name for p in (work / "checkpoints").iterdir() if p.name.startswith(".")] == []
    # The loss curve is whole too: the logged history came back with the resume checkpoint.
    curve = Path("dvclive", stage, "plots", "metrics", "train", "loss.tsv")
    assert (work / curve).read_text() == (prepared / curve).read_text()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_ctrl_c_saves_a_resume_checkpoint_and_the_rerun_ends_identical(
    prepared: Path, signum: signal.Signals
) -> None:
    work = fresh_copy(prepared, f"stop-{signum.name}", "pretrain")
    proc = start_and_wait_for_resume("pretrain", work)
    proc.send_signal(signum)
    _, stderr = proc.communicate()
    assert proc.returncode == 128 + signum  # 143 for SIGTERM, 130 for Ctrl-C
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    stopped_at = torch.load(work / RESUME["pretrain"], weights_only=True)["step"]
    assert last == (
        f"error: pretrain: stopped by {signum.name} at step {stopped_at}; saved "
        f"{RESUME['pretrain']}: run the stage again (dvc repro) to continue from there"
    )
    assert not (work / OUT["pretrain"]).exists()

    rerun = run_stage("pretrain", work)
    assert rerun.returncode == 0, rerun.stderr
    assert_same_final_checkpoint(work / OUT["pretrain"], prepared / OUT["pretrain"])


@pytest.mark.parametrize(
    ("section", "change", "named"),
    [
        ("pretrain", {"batch_size": 4}, "params.batch_size: 8 then, 4 now"),
        ("pretrain", {"lr": 0.001}, "params.lr: 0.003 then, 0.001 now"),
        ("model", {"n_layer": 3}, "model.n_layer: 2 then, 3 now"),
    ],
)
def test_resume_checkpoint_of_other_settings_is_refused(
    prepared: Path, section: str, change: dict, named: str
) -> None:
    work = fresh_copy(prepared, f"refuse-{section}-{next(iter(change))}", "pretrain")
    proc = start_and_wait_for_resume("pretrain", work)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    set_params(work, section, **change)
    rerun = run_stage("pretrain", work)
    assert rerun.returncode == 1
    assert "Traceback" not in rerun.stderr
    resume = RESUME["pretrain"]
    assert rerun.stderr == (
        f"error: {resume}: saved by a run with other settings ({named}): restore them to "
        f"resume that run, or delete {resume} to start over\n"
    )
    assert (work / resume).exists()  # kept for the user to decide


def test_changed_data_is_refused(prepared: Path) -> None:
    work = fresh_copy(prepared, "refuse-data", "pretrain")
    proc = start_and_wait_for_resume("pretrain", work)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    (work / "data" / "example_data_text.txt").write_text("Other text entirely.\n" * 2000)
    for stage in ("tokenize-text", "pack"):
        assert run_stage(stage, work).returncode == 0
    rerun = run_stage("pretrain", work)
    assert rerun.returncode == 1
    assert "saved by a run with other settings (data." in rerun.stderr


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_state(prepared: Path) -> None:
    work = fresh_copy(prepared, "nan", "pretrain")
    # A learning rate this large blows the weights up within a few dozen steps.
    set_params(work, "pretrain", lr=1e4, grad_clip=0.0, warmup_steps=0)
    proc = run_stage("pretrain", work)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    message = proc.stderr.strip().splitlines()[-1]
    found = re.fullmatch(r"error: pretrain: loss became (nan|inf) at step (\d+)(;.*)?", message)
    assert found, message
    bad_step = int(found.group(2))
    resume = work / RESUME["pretrain"]
    if resume.exists():
        good = torch.load(resume, weights_only=True)
        assert good["step"] < bad_step
        assert all(torch.isfinite(t).all() for t in good["model"].values())
        assert f"the last good state is {RESUME['pretrain']} (step {good['step']})" in message
    assert not (work / OUT["pretrain"]).exists()
