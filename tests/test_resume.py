"""Exact resume: a stage stopped or killed mid-run and run again ends with the same bits as one
that was never interrupted; SIGTERM and Ctrl-C save where they stop; a resume checkpoint is
used only by the run it belongs to (other settings start over, saying so); a NaN stops the run
naming its step and keeps the last good state.

The runs are in-process (conftest.run_stage), with the interruption injected at an exact step
through TrainState.record; one test kills a real stage process with SIGKILL."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import run_stage, run_stage_ok, scratch_inputs, set_params, stage_command

from xinslm import resume
from xinslm.train_state import TrainState

TINY = {
    "model": {"context_len": 32, "n_layer": 2, "n_head": 2, "n_kv_head": 1, "n_embd": 32},
    "pretrain": {
        "max_steps": 60,
        "batch_size": 8,
        "warmup_steps": 10,
        "log_every": 5,
        "eval_every": 20,
        "eval_batches": 2,
        "checkpoint_every": 10,
        "device": "cpu",
    },
    "sft": {
        "max_steps": 40,
        "batch_size": 8,
        "log_every": 5,
        "eval_every": 20,
        "eval_batches": 2,
        "checkpoint_every": 10,
        "device": "cpu",
    },
}
RESUME = {"pretrain": "checkpoints/resume/pretrain.pt", "sft": "checkpoints/resume/sft.pt"}
OUT = {"pretrain": "checkpoints/base.pt", "sft": "checkpoints/chat.pt"}
CURVE = Path("dvclive", "{stage}", "plots", "metrics", "train", "loss.tsv")


class Killed(BaseException):
    """Stands for the machine dying: nothing in the stage catches it, nothing is saved."""


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """Tokenized, packed and rendered bundled data, tiny params, and an uninterrupted run of
    pretrain and sft (the reference)."""
    work = scratch_inputs(tmp_path_factory.mktemp("resume") / "ref")
    for section, values in TINY.items():
        set_params(work, section, **values)
    for stage in ("tokenize-text", "pack", "render-chat", "pretrain", "sft"):
        run_stage_ok(stage, work)
    assert not list((work / "checkpoints" / "resume").glob("*.pt"))  # removed when complete
    return work


@pytest.fixture(scope="module")
def prepared_shards(tmp_path_factory) -> Path:
    """As prepared, for pretrain only, with the bundled text as 41 JSONL shards of its
    paragraphs: blocks read across shard boundaries, each paragraph whole in train or val."""
    work = scratch_inputs(tmp_path_factory.mktemp("resume-shards") / "ref")
    text = (work / "data" / "example_data_text.txt").read_text()
    paragraphs = [json.dumps({"text": p + "\n"}) + "\n" for p in text.split("\n\n") if p]
    (work / "corpus").mkdir()
    for i in range(0, len(paragraphs), 7):
        (work / "corpus" / f"part-{i // 7:03}.jsonl").write_text("".join(paragraphs[i : i + 7]))
    set_params(work, "text", input="corpus", val_fraction=0.2)
    for section, values in TINY.items():
        set_params(work, section, **values)
    for stage in ("tokenize-text", "pack", "pretrain"):
        run_stage_ok(stage, work)
    return work


def fresh_copy(prepared: Path, name: str, stage: str) -> Path:
    """The prepared folder without the outputs of `stage`."""
    work = prepared.parent / name
    shutil.copytree(prepared, work)
    (work / OUT[stage]).unlink()
    shutil.rmtree(work / "dvclive" / stage)
    return work


def at_step(monkeypatch, step: int, action) -> None:
    """Call action(state) right after step `step` of the next run is done."""
    record = TrainState.record

    def recording(self, loss, tokens):
        record(self, loss, tokens)
        if self.step == step:
            action(self)

    monkeypatch.setattr(TrainState, "record", recording)


def kill(state: TrainState) -> None:
    raise Killed


def assert_same_final_checkpoint(a: Path, b: Path) -> None:
    first, second = (torch.load(p, weights_only=True) for p in (a, b))
    for key, tensor in first["model"].items():
        assert torch.equal(tensor, second["model"][key]), key
    assert first["summary"] == second["summary"]
    assert a.read_bytes() == b.read_bytes()  # optimizer state and all


def assert_same_curves(work: Path, prepared: Path, stage: str) -> None:
    names = ["train/loss.tsv", "val/loss.tsv", "lr.tsv", "flops.tsv", "val/flops.tsv"]
    for name in names + (["val/bpb.tsv"] if stage == "pretrain" else []):
        curve = Path("dvclive", stage, "plots", "metrics", name)
        assert (work / curve).read_text() == (prepared / curve).read_text(), name


@pytest.mark.parametrize(("stage", "killed_at"), [("pretrain", 27), ("pretrain", 40), ("sft", 33)])
def test_killed_run_resumes_from_its_last_checkpoint_and_ends_bitwise_identical(
    prepared: Path, stage: str, killed_at: int, monkeypatch
) -> None:
    work = fresh_copy(prepared, f"kill-{stage}-{killed_at}", stage)
    at_step(monkeypatch, killed_at, kill)
    with pytest.raises(Killed):
        run_stage(stage, work)
    monkeypatch.undo()
    saved = torch.load(work / RESUME[stage], weights_only=True)
    # The last periodic checkpoint: the kill comes before the save of a step that is due one.
    assert saved["step"] == (killed_at - 1) // 10 * 10
    assert not (work / OUT[stage]).exists()

    rerun = run_stage_ok(stage, work)
    assert f"{stage}: resuming from {RESUME[stage]} at step {saved['step']}\n" in rerun.stdout
    assert not (work / RESUME[stage]).exists()  # a completed run removes it
    assert_same_final_checkpoint(work / OUT[stage], prepared / OUT[stage])
    # The curves are whole: the history came back with the resume checkpoint, and the
    # points the killed run logged after it were dropped, not doubled.
    assert_same_curves(work, prepared, stage)
    assert [p.name for p in (work / "checkpoints").iterdir() if p.name.startswith(".")] == []


def test_killed_pretrain_on_a_sharded_corpus_resumes_bitwise_identical(
    prepared_shards: Path, monkeypatch
) -> None:
    work = fresh_copy(prepared_shards, "kill-shards", "pretrain")
    at_step(monkeypatch, 33, kill)
    with pytest.raises(Killed):
        run_stage("pretrain", work)
    monkeypatch.undo()
    rerun = run_stage_ok("pretrain", work)
    assert f"pretrain: resuming from {RESUME['pretrain']} at step 30\n" in rerun.stdout
    assert_same_final_checkpoint(work / OUT["pretrain"], prepared_shards / OUT["pretrain"])
    assert_same_curves(work, prepared_shards, "pretrain")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_ctrl_c_saves_at_the_step_and_the_rerun_ends_identical(
    prepared: Path, signum: signal.Signals, monkeypatch
) -> None:
    work = fresh_copy(prepared, f"stop-{signum.name}", "pretrain")
    handlers = [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)]
    at_step(monkeypatch, 23, lambda state: os.kill(os.getpid(), signum))
    stopped = run_stage("pretrain", work)
    monkeypatch.undo()
    assert stopped.returncode == 128 + signum  # 143 for SIGTERM, 130 for Ctrl-C
    assert stopped.stderr == (
        f"error: pretrain: stopped by {signum.name} at step 23; saved "
        f"{RESUME['pretrain']}: run the stage again (dvc repro) to continue from there\n"
    )
    assert torch.load(work / RESUME["pretrain"], weights_only=True)["step"] == 23
    assert not (work / OUT["pretrain"]).exists()
    assert [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)] == handlers  # put back

    run_stage_ok("pretrain", work)
    assert_same_final_checkpoint(work / OUT["pretrain"], prepared / OUT["pretrain"])
    assert_same_curves(work, prepared, "pretrain")


def test_sigkill_of_the_stage_process_then_rerun_ends_bitwise_identical(prepared: Path) -> None:
    """A real process killed at a random step after its first resume checkpoint."""
    work = fresh_copy(prepared, "sigkill", "pretrain")
    set_params(work, "pretrain", max_steps=400)  # long enough to be killed while it runs
    reference = prepared.parent / "sigkill-reference"
    shutil.copytree(work, reference)
    run_stage_ok("pretrain", reference)

    proc = subprocess.Popen(stage_command("pretrain"), cwd=work, stdout=subprocess.DEVNULL)
    saved = work / RESUME["pretrain"]
    deadline = time.monotonic() + 120
    while not saved.exists():
        assert proc.poll() is None, "pretrain ended before its first resume checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    time.sleep(random.uniform(0.0, 0.3))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the stage finished before it could be killed"
    killed_at = torch.load(saved, weights_only=True)["step"]
    assert 10 <= killed_at < 400

    rerun = subprocess.run(stage_command("pretrain"), cwd=work, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming from {RESUME['pretrain']} at step {killed_at}" in rerun.stdout
    assert_same_final_checkpoint(work / OUT["pretrain"], reference / OUT["pretrain"])
    assert_same_curves(work, reference, "pretrain")


@pytest.mark.parametrize(
    ("section", "change", "named"),
    [
        ("pretrain", {"lr": 0.001}, "params.lr: 0.006 then, 0.001 now"),
        ("pretrain", {"batch_size": 4}, "params.batch_size: 8 then, 4 now"),
        ("model", {"n_layer": 3}, "model.n_layer: 2 then, 3 now"),
    ],
)
def test_a_run_with_other_settings_starts_over_and_says_so(
    prepared: Path, section: str, change: dict, named: str, monkeypatch
) -> None:
    name = f"other-{section}-{next(iter(change))}"
    work = fresh_copy(prepared, name, "pretrain")
    at_step(monkeypatch, 25, kill)
    with pytest.raises(Killed):
        run_stage("pretrain", work)
    monkeypatch.undo()
    set_params(work, section, **change)
    rerun = run_stage_ok("pretrain", work)
    resume_path = RESUME["pretrain"]
    assert (
        f"pretrain: {resume_path} is from a run with other settings ({named}); starting over "
        "(it is replaced at the first save)\n"
    ) in rerun.stdout
    assert "resuming" not in rerun.stdout
    assert not (work / resume_path).exists()
    # Started over: the same bits as a run of the new settings that never saw the old file.
    clean = prepared.parent / f"{name}-clean"
    shutil.copytree(prepared, clean)
    set_params(clean, section, **change)
    run_stage_ok("pretrain", clean)
    assert (work / OUT["pretrain"]).read_bytes() == (clean / OUT["pretrain"]).read_bytes()


def test_other_data_or_other_code_starts_over(prepared: Path, monkeypatch) -> None:
    work = fresh_copy(prepared, "other-data", "pretrain")
    at_step(monkeypatch, 25, kill)
    with pytest.raises(Killed):
        run_stage("pretrain", work)
    monkeypatch.undo()
    (work / "data" / "example_data_text.txt").write_text("Other text entirely.\n" * 2000)
    run_stage_ok("tokenize-text", work)
    run_stage_ok("pack", work)
    rerun = run_stage_ok("pretrain", work)
    assert f"{RESUME['pretrain']} is from a run with other settings (data." in rerun.stdout

    work = fresh_copy(prepared, "other-code", "pretrain")
    at_step(monkeypatch, 25, kill)
    with pytest.raises(Killed):
        run_stage("pretrain", work)
    monkeypatch.undo()
    monkeypatch.setattr(resume, "code_fingerprint", lambda: "edited")
    rerun = run_stage_ok("pretrain", work)
    assert re.search(r"other settings \(code: '\w+' then, 'edited' now\); starting", rerun.stdout)


def test_a_stale_checkpoint_of_the_same_settings_is_resumed(prepared: Path, monkeypatch) -> None:
    """What DVC's run-cache leaves behind: the stage restored, the killed run's checkpoint still
    there. A later run of those same settings continues it, to the same bits."""
    work = fresh_copy(prepared, "stale", "pretrain")
    at_step(monkeypatch, 25, kill)
    with pytest.raises(Killed):
        run_stage("pretrain", work)
    monkeypatch.undo()
    shutil.copy(prepared / OUT["pretrain"], work / OUT["pretrain"])  # the run-cache restore
    run_stage_ok("pretrain", work)
    assert_same_final_checkpoint(work / OUT["pretrain"], prepared / OUT["pretrain"])


def poison_loss(state: TrainState) -> None:
    state.window[state.window_steps - 1] = float("nan")


def poison_weights(state: TrainState) -> None:
    with torch.no_grad():
        next(state.model.parameters())[0, 0] = float("inf")


@pytest.mark.parametrize(
    ("step", "poison", "message"),
    [
        # The loss is read at log points (every 5 steps): the message names its exact step.
        (13, poison_loss, "pretrain: loss became nan at step 13"),
        (15, poison_weights, "pretrain: weights became non-finite by step 20"),
    ],
)
def test_nan_stops_naming_the_step_and_keeps_the_last_good_state(
    prepared: Path, step: int, poison, message: str, monkeypatch
) -> None:
    work = fresh_copy(prepared, f"nan-{step}", "pretrain")
    at_step(monkeypatch, step, poison)
    proc = run_stage("pretrain", work)
    assert proc.returncode == 1
    assert proc.stderr == (
        f"error: {message}; the last good state is {RESUME['pretrain']} (step 10)\n"
    )
    good = torch.load(work / RESUME["pretrain"], weights_only=True)
    assert good["step"] == 10  # the checkpoint of step 10 stays; none was written after
    assert all(torch.isfinite(t).all() for t in good["model"].values())
    assert not (work / OUT["pretrain"]).exists()


def test_a_diverging_run_stops_with_one_line_and_no_checkpoint(prepared: Path) -> None:
    work = fresh_copy(prepared, "diverge", "pretrain")
    # A learning rate this large blows the weights up within a few steps.
    set_params(work, "pretrain", lr=1e4, grad_clip=0.0, warmup_steps=0)
    proc = run_stage("pretrain", work)
    assert proc.returncode == 1
    assert re.fullmatch(
        r"error: pretrain: (loss became (nan|inf) at step \d+|weights became non-finite by "
        r"step \d+)(; the last good state is \S+ \(step \d+\))?\n",
        proc.stderr,
    ), proc.stderr
    assert not (work / OUT["pretrain"]).exists()
