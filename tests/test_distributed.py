"""Data-parallel training: pretrain and sft with nproc 2 (torchrun, gloo on the CPU) end with the
weights of one process training on the same global batch, and write their outputs once."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import run_stage_ok, scratch_inputs, set_params

from xinslm.batches import BlockBatches, ShuffledIndices
from xinslm.checkpoint import load_checkpoint, model_from_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "model": {"context_len": 32, "n_layer": 2, "n_head": 2, "n_kv_head": 1, "n_embd": 32},
    "pretrain": {"max_steps": 12, "warmup_steps": 2, "log_every": 4, "eval_every": 8},
    "sft": {"max_steps": 8, "warmup_steps": 2, "log_every": 4, "eval_every": 4},
}
COMMON = {"eval_batches": 2, "checkpoint_every": 5, "device": "cpu", "optimizer": "muon"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Prepared data, then pretrain + sft twice: one process with batches of 8 (sft: 4, two
    micro-batches a step, and 2 text windows in each), and two processes with 4 each (sft: 2, and
    1 window)."""
    base = tmp_path_factory.mktemp("ddp")
    prepared = base / "prepared"
    scratch_inputs(prepared)
    for section, values in TINY.items():
        set_params(prepared, section, **values, **(COMMON if section != "model" else {}))
    for stage in ("tokenize-text", "pack", "render-chat"):
        run_stage_ok(stage, prepared)
    out = {}
    for name, nproc in (("single", 1), ("ddp", 2)):
        work = base / name
        shutil.copytree(prepared, work)
        set_params(work, "pretrain", nproc=nproc, batch_size=8 // nproc)
        set_params(
            work, "sft", nproc=nproc, batch_size=4 // nproc, grad_accum=2, text_rows=2 // nproc
        )
        for stage in ("pretrain", "sft"):
            proc = run_stage_ok(stage, work, nproc)
            (work / f"{stage}.stdout").write_text(proc.stdout)
        out[name] = work
    return out


@pytest.mark.parametrize("checkpoint", ["checkpoints/base.pt", "checkpoints/chat.pt"])
def test_two_processes_end_with_the_weights_of_one_on_the_same_global_batch(runs, checkpoint):
    single = load_checkpoint(runs["single"] / checkpoint)
    ddp = load_checkpoint(runs["ddp"] / checkpoint)
    assert single["model"].keys() == ddp["model"].keys()  # no "module." prefix from DDP
    for key, tensor in single["model"].items():
        torch.testing.assert_close(ddp["model"][key], tensor, rtol=1e-4, atol=1e-5, msg=key)
    # The logged train loss is the global batch's, and tokens count every process.
    assert ddp["summary"]["tokens"] == single["summary"]["tokens"]
    assert ddp["summary"]["train_loss"] == pytest.approx(single["summary"]["train_loss"], 1e-4)
    assert ddp["summary"]["val_loss"] == pytest.approx(single["summary"]["val_loss"], 1e-4)


def test_a_checkpoint_written_under_ddp_loads_in_a_plain_process(runs):
    model = model_from_checkpoint(load_checkpoint(runs["ddp"] / "checkpoints/base.pt"))
    logits, _ = model(torch.tensor([[1, 2, 3]]))
    assert logits.shape == (1, 3, model.config.vocab_size)


def test_only_rank_0_writes_and_prints(runs):
    work = runs["ddp"]
    stdout = (work / "pretrain.stdout").read_text()
    assert stdout.count("pretrain: starting 2 processes through torchrun") == 1
    assert stdout.count("parameters,") == 1  # the stage's own line, from rank 0 only
    assert stdout.count("-> checkpoints/base.pt") == 1
    metrics = json.loads((work / "dvclive/pretrain/metrics.json").read_text())
    assert metrics["step"] == 12 and metrics["tokens"] == 12 * 8 * 32
    assert not any((work / "checkpoints" / "resume").glob("*.pt"))  # removed when complete
    val_lines = (work / "dvclive/pretrain/plots/metrics/val/loss.tsv").read_text().splitlines()
    assert [line.split("\t")[0] for line in val_lines] == ["step", "8", "12"]


def test_processes_read_disjoint_slices_of_the_single_process_batches():
    blocks = torch.arange(40 * 9).reshape(40, 9).numpy()
    one = BlockBatches(blocks, batch_size=6, seed=3, shift=True)
    parts = [BlockBatches(blocks, 3, 3, shift=True, rank=r, world=2) for r in range(2)]
    for _ in range(20):  # several epochs, with the shifted windows
        x, y = next(one)
        xs, ys = zip(*(next(p) for p in parts), strict=True)
        assert torch.equal(torch.cat(xs), x) and torch.equal(torch.cat(ys), y)
    indices = ShuffledIndices(n=10, batch_size=2, seed=0, rank=1, world=3)
    whole = ShuffledIndices(n=10, batch_size=6, seed=0)
    assert list(indices.next()) == list(whole.next()[2:4])
    assert indices.state_dict() == whole.state_dict()  # the position is the global one


def test_sigterm_under_torchrun_saves_and_the_rerun_ends_as_an_uninterrupted_run(runs):
    """SIGTERM to the stage (as dvc or a scheduler sends it) reaches torchrun, which passes it
    to the processes; they agree on a step, save, and the launcher exits 143. Run again, the
    stage resumes there and ends with the bits of a run that was never stopped."""
    reference = runs["ddp"].parent / "sigterm-reference"
    shutil.copytree(runs["ddp"], reference)
    set_params(reference, "pretrain", max_steps=200, log_every=5, checkpoint_every=50)
    (reference / "checkpoints" / "base.pt").unlink()
    stopped = reference.parent / "sigterm-stopped"
    shutil.copytree(reference, stopped)
    run_stage_ok("pretrain", reference, nproc=2)

    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "stages" / "pretrain.py")],
        cwd=stopped,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    resume = stopped / "checkpoints" / "resume" / "pretrain.pt"
    deadline = time.monotonic() + 120
    while not resume.exists():  # the first checkpoint (step 50): the processes are running
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run ended before SIGTERM reached it (a very fast machine)")
    assert proc.returncode == 143, stderr
    assert re.search(r"error \(rank 0\): pretrain: stopped by SIGTERM at step \d+", stderr)
    step = torch.load(resume, weights_only=False)["step"]
    assert 50 <= step < 200 and step % 5 == 0  # at a log point, where they agree

    rerun = run_stage_ok("pretrain", stopped, nproc=2)
    assert f"resuming from checkpoints/resume/pretrain.pt at step {step}" in rerun.stdout
    first = load_checkpoint(reference / "checkpoints" / "base.pt")
    second = load_checkpoint(stopped / "checkpoints" / "base.pt")
    for key, tensor in first["model"].items():
        assert torch.equal(tensor, second["model"][key]), key
    assert first["summary"] == second["summary"]
