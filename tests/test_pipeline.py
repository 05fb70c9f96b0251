"""The DVC pipeline end to end, in a throwaway copy of the repo with a tiny model:
`dvc repro` runs every stage once, then reruns exactly the stages an edit touches; a killed
stage resumes under `dvc repro`, and one restored from DVC's run-cache blocks nothing.

Each test that changes the repo gets its own copy of the session's trained repo. Which
modules each stage imports is checked without running anything in tests/test_deps.py; here
a few code edits show DVC acting on it."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import (
    ALL_STAGES,
    ANSWER_TASK,
    TINY_PIPELINE,
    command_env,
    copy_repo,
    edit_params,
    run,
)

from xinslm.flops import flops_per_token
from xinslm.model import ModelConfig


def stages_to_run(repo: Path) -> set[str]:
    """The stages `dvc repro --dry` plans from what changed so far (not yet what they change)."""
    out = run(["dvc", "repro", "--dry"], repo).stdout
    return set(re.findall(r"Running stage '([^']+)'", out))


def stages_rerun(repo: Path) -> set[str]:
    """The stages a real `dvc repro` runs: an unchanged output stops the rerun there."""
    out = run(["dvc", "repro"], repo).stdout
    return set(re.findall(r"Running stage '([^']+)'", out))


@pytest.fixture
def repo(trained_repo: Path) -> Path:
    """The session's trained repo, to read only."""
    return trained_repo


@pytest.fixture
def clean(trained_repo: Path, tmp_path: Path) -> Path:
    """A copy of the trained repo for this test to change."""
    return copy_repo(trained_repo, tmp_path / "repo")


def test_repro_writes_checkpoints_and_then_has_nothing_to_do(repo: Path) -> None:
    assert (repo / "checkpoints/base.pt").is_file()
    assert (repo / "checkpoints/chat.pt").is_file()
    out = run(["dvc", "repro"], repo).stdout
    assert "Data and pipelines are up to date." in out
    assert not re.search(r"Running stage", out)


def test_sft_lr_edit_reruns_sft_only_and_params_diff_shows_it(clean: Path) -> None:
    edit_params(clean, {"sft": {"lr": 0.0005}})
    assert stages_to_run(clean) == {"sft"}  # --dry lists what changed directly
    assert stages_rerun(clean) == {"sft", "export", "evaluate"}
    diff = json.loads(run(["dvc", "params", "diff", "--json"], clean).stdout)
    assert diff["params.yaml"] == {"sft.lr": {"old": 0.002, "new": 0.0005, "diff": -0.0015}}


def test_context_len_edit_keeps_tokenize_text(clean: Path) -> None:
    edit_params(clean, {"model": {"context_len": 128}})
    assert stages_rerun(clean) == {"pack", "pretrain", "render-chat", "sft", "export", "evaluate"}


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        # (pretrain.lr: see the killed-run test's experiment)
        ({"chat": {"overlong": "drop"}}, {"render-chat"}),  # nothing is too long: same output
        (
            {"chat": {"input": "data/example_data_chat_val.jsonl"}},
            {"render-chat", "sft", "export", "evaluate"},
        ),
        ({"eval": {"temperature": 0.0}}, {"evaluate"}),
        # The byte tokenizer does not read the BPE's params: only train-tokenizer's note reruns.
        ({"tokenizer": {"vocab_size": 300}}, {"train-tokenizer"}),
        ({"text": {"val_fraction": 0.2}}, ALL_STAGES - {"render-chat"}),
        # (tokenizer.name: see the trained-BPE test)
    ],
)
def test_param_edit_reruns_exactly(clean: Path, changes: dict, expected: set) -> None:
    edit_params(clean, changes)
    assert stages_rerun(clean) == expected


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        # A stage whose code changed reruns; when its output comes out byte-identical (same
        # inputs, deterministic code), DVC stops there: sft is skipped after render-chat, and
        # evaluate after sft.
        ("xinslm/chat_template.py", {"render-chat", "evaluate"}),
        # The training loop: evaluate does not import it, and finds both checkpoints unchanged.
        ("xinslm/train.py", {"pretrain", "sft"}),
    ],
)
def test_code_edit_reruns_the_stages_that_import_it(clean: Path, module: str, expected) -> None:
    with open(clean / module, "a") as f:
        f.write("\n# an edit\n")
    assert stages_rerun(clean) == expected


def test_trained_bpe_vocab_size_reruns_the_tokenizer_and_all_after_it(clean: Path) -> None:
    edit_params(clean, {"tokenizer": {"name": "bpe", "vocab_size": 300}})
    assert stages_rerun(clean) == ALL_STAGES
    meta = json.loads((clean / "data/tokens/meta.json").read_text())
    assert meta["tokenizer"]["name"] == "bpe" and meta["tokenizer"]["vocab_size"] == 309
    # With bpe, vocab_size makes another tokenizer, and every stage after it sees a changed
    # input (running them all again would only repeat the run above).
    edit_params(clean, {"tokenizer": {"vocab_size": 320}})
    assert stages_to_run(clean) == {"train-tokenizer"}
    run(["dvc", "repro", "--single-item", "train-tokenizer"], clean)
    # Its readers:
    assert stages_to_run(clean) == {"tokenize-text", "render-chat", "export", "evaluate"}


def start_and_kill_at_first_resume_checkpoint(repo: Path, *dvc_args: str) -> None:
    """Run `dvc repro ...` and kill it (dvc and the stage: the machine died) once pretrain
    saved its first resume checkpoint; meanwhile its curves are already on disk."""
    proc = subprocess.Popen(
        ["dvc", "repro", *dvc_args],
        cwd=repo,
        env=command_env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    resume = repo / "checkpoints/resume/pretrain.pt"
    deadline = time.monotonic() + 120
    while not resume.exists():
        assert proc.poll() is None, "pretrain ended before its first resume checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    # Live curves: what was logged up to the checkpoint is there while the run goes on.
    so_far = curve(repo).splitlines()
    assert so_far[0] == "step\tloss" and so_far[1].startswith("10\t")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def curve(repo: Path) -> str:
    return (repo / "dvclive/pretrain/plots/metrics/train/loss.tsv").read_text()


def test_killed_pretrain_resumes_and_a_run_cache_restore_blocks_no_later_experiment(
    clean: Path,
) -> None:
    """Resumed under DVC, with its curve written live; then the issue's three commands: a run
    killed, `dvc repro` restoring it from the run-cache, the next experiment. (That a resumed
    run ends bit-identical to an uninterrupted one is tests/test_resume.py's.)"""
    edit_params(clean, {"pretrain": {"max_steps": 100, "checkpoint_every": 10, "log_every": 10}})
    resume = clean / "checkpoints/resume/pretrain.pt"

    # Killed, then `dvc repro` continues the run where its resume checkpoint left it.
    start_and_kill_at_first_resume_checkpoint(clean, "pretrain")
    out = run(["dvc", "repro", "pretrain"], clean).stdout
    assert "Running stage 'pretrain'" in out
    assert "pretrain: resuming from checkpoints/resume/pretrain.pt at step" in out
    assert not resume.exists()
    resumed = (clean / "checkpoints/base.pt").read_bytes()
    steps = [line.split("\t")[0] for line in curve(clean).splitlines()]
    assert steps == ["step", *map(str, range(10, 101, 10))]  # whole: not cut, not doubled

    # Killed again, and this time DVC restores the stage from its run-cache: the killed
    # run's resume checkpoint stays behind, and must not stop the next experiment.
    start_and_kill_at_first_resume_checkpoint(clean, "--force", "pretrain")
    out = run(["dvc", "repro", "pretrain"], clean).stdout
    assert "Stage 'pretrain' is cached - skipping run, checking out outputs" in out
    assert (clean / "checkpoints/base.pt").read_bytes() == resumed
    assert resume.exists()
    out = run(["dvc", "exp", "run", "-n", "after-kill", "-S", "pretrain.lr=0.002"], clean).stdout
    assert (
        "pretrain: checkpoints/resume/pretrain.pt is from a run with other settings "
        "(params.lr: 0.006 then, 0.002 now); starting over" in out
    )
    ran = set(re.findall(r"Running stage '([^']+)'", out))
    assert ran == {"pretrain", "sft", "export", "evaluate"}
    assert not resume.exists()


def test_sft_starts_from_base_checkpoint(repo: Path) -> None:
    base = torch.load(repo / "checkpoints/base.pt", weights_only=True)
    chat = torch.load(repo / "checkpoints/chat.pt", weights_only=True)
    assert chat["model_config"] == base["model_config"]
    assert chat["tokenizer"] == base["tokenizer"]
    assert chat["base_step"] == base["step"] == TINY_PIPELINE["pretrain"]["max_steps"]
    assert chat["step"] == TINY_PIPELINE["sft"]["max_steps"]
    # 3 warmup steps (lr x 0.1, 0.2, 0.3) move a weight by at most about 0.6 lr each under Adam
    # (lr 0.002) and Muon (muon_lr 0.04, its orthogonal update's entries below 1, x2 for its
    # shape scale): within 0.05 of the base weights, while a fresh init differs by O(1).
    for name, w in base["model"].items():
        delta = (chat["model"][name] - w).abs().max().item()
        assert delta < 0.05, name
    assert any((chat["model"][k] != w).any() for k, w in base["model"].items())


def test_metrics_and_exp_run(clean: Path) -> None:
    repo = clean
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo).stdout)
    files = shown[""]["data"]
    assert {"dvclive/pretrain/metrics.json", "dvclive/sft/metrics.json"} <= set(files)
    ev = files["eval/metrics.json"]["data"]
    assert set(ev) == {"base", "chat", "tokenizer"}
    assert 0.99 < ev["tokenizer"]["val_bytes_per_token"] <= 1.0  # bytes; BOS targets carry none
    assert set(ev["chat"]) == {"val_bpb", "val_loss", "assistant_val_loss"}
    assert 0 < ev["base"]["val_bpb"] < 9  # a byte model that learned anything is below 8 bits

    run(["dvc", "exp", "run", "-S", "sft.max_steps=5", "-n", "five-steps"], repo)
    table = run(["dvc", "exp", "show", "--no-pager", "--csv"], repo).stdout
    rows = {row["Experiment"] or row["rev"]: row for row in csv.DictReader(io.StringIO(table))}
    five = rows["five-steps"]
    (commit,) = [row for name, row in rows.items() if name not in ("workspace", "five-steps")]
    assert (five["sft.max_steps"], commit["sft.max_steps"]) == ("5", "3")
    for column in ("base.val_bpb", "chat.val_bpb", "chat.assistant_val_loss"):
        assert five[column] and commit[column], column
    # The experiment reran sft and evaluate only: same base model, another chat model.
    assert five["base.val_bpb"] == commit["base.val_bpb"]
    assert five["chat.assistant_val_loss"] != commit["chat.assistant_val_loss"]


def test_plots_diff_overlays_val_bpb_against_flops_of_a_depth_experiment(clean: Path) -> None:
    """The README's miniseries in small: an experiment of pretrain alone at model.depth 1,
    and dvc.yaml's plot of val bpb against FLOPs for it beside the commit's run."""
    sets = [
        "model.depth=1",
        "pretrain.max_steps=6",
        "pretrain.log_every=1",
        "pretrain.eval_every=3",
    ]
    out = run(
        ["dvc", "exp", "run", "pretrain", "-n", "d1", *[a for x in sets for a in ("-S", x)]], clean
    )
    assert set(re.findall(r"Running stage '([^']+)'", out.stdout)) == {"pretrain"}
    shown = json.loads(run(["dvc", "plots", "diff", "--json", "HEAD", "d1"], clean).stdout)
    (plot,) = shown["data"]["pretrain val bpb vs FLOPs"]
    points = {}
    for point in plot["content"]["data"]["values"]:
        points.setdefault(point["rev"], []).append(point)
    assert set(points) == {"HEAD", "d1"}
    # x and y are joined row by row: each evaluation's bpb with the FLOPs at its step (every
    # log point has flops, only evaluations have val/flops), 4 blocks of 256 tokens a step.
    shape = {"context_len": 256, "vocab_size": 265}
    tiny = ModelConfig(**shape, **TINY_PIPELINE["model"])
    depth_1 = ModelConfig(**shape, n_layer=1, n_head=1, n_kv_head=1, n_embd=128)
    for rev, config, steps in (("HEAD", tiny, [2, 4]), ("d1", depth_1, [3, 6])):
        assert [int(p["step"]) for p in points[rev]] == steps
        flops = [s * 4 * 256 * flops_per_token(config) for s in steps]
        assert [float(p["flops"]) for p in points[rev]] == flops
    bpb = (clean / "dvclive/pretrain/plots/metrics/val/bpb.tsv").read_text().splitlines()
    assert [p["bpb"] for p in points["d1"]] == [line.split("\t")[1] for line in bpb[1:]]
    # Every chart holds both runs' curves, one chart per idea (the experiment's sft curves are
    # the commit's: it kept them, as it did not run sft).
    for name, (chart,) in shown["data"].items():
        assert {p["rev"] for p in chart["content"]["data"]["values"]} == {"HEAD", "d1"}, name


def test_task_accuracies_in_exp_show_and_eval_edits_rerun_only_the_evaluation(
    clean: Path,
) -> None:
    # Two tasks (the tiny pipeline has none): an answer task with pass@2 and a choice task.
    # Only their stages run: nothing they read changed for the others.
    repo = clean
    tasks = [
        {**ANSWER_TASK, "limit": 3, "samples": 2},
        {"name": "facts", "kind": "choice", "path": "data/example_task_choice.jsonl",
         "limit": 5, "samples": 1},
    ]  # fmt: skip
    flow = ", ".join("{" + ", ".join(f"{k}: {v}" for k, v in t.items()) + "}" for t in tasks)
    out = run(["dvc", "exp", "run", "-S", f"eval.tasks=[{flow}]", "-n", "tasks"], repo).stdout
    assert set(re.findall(r"Running stage '([^']+)'", out)) == {
        "evaluate-task@0",
        "evaluate-task@1",
    }
    table = run(["dvc", "exp", "show", "--no-pager", "--csv"], repo).stdout
    row = next(r for r in csv.DictReader(io.StringIO(table)) if r["Experiment"] == "tasks")

    def shown(file: str, key: str) -> str:  # exp show names a column by its file only if
        return row.get(f"{file}:{key}", row.get(key))  # another file has that key too

    answer, choice = "eval/tasks/arithmetic.json", "eval/tasks/facts.json"
    assert (shown(answer, "items"), shown(answer, "tool"), shown(answer, "contaminated")) == (
        "3",
        "True",
        "0",
    )
    assert 0 <= float(shown(answer, "accuracy")) <= float(shown(answer, "pass@2")) <= 1
    assert 0 <= float(shown(choice, "accuracy")) <= 1
    assert 0 <= float(shown(choice, "accuracy_norm")) <= 1
    assert float(shown(choice, "random_baseline")) == 0.25
    assert shown(choice, "contaminated") == "0"
    rows = [json.loads(line) for line in (repo / "eval/tasks/arithmetic.jsonl").open()]
    assert len(rows) == 3 and set(rows[0]) == {
        "question", "reference", "reference_answer", "output", "answer", "correct",
        "seen_in_training",
    }  # fmt: skip
    assert len(rows[0]["output"]) == 2 and rows[0]["reference_answer"] == "120"

    # One task's limit: that task alone. The calculator off: every evaluation stage.
    edit_params(repo, {"eval": {"tasks": [tasks[0], {**tasks[1], "limit": 6}]}})
    assert stages_to_run(repo) == {"evaluate-task@1"}
    edit_params(repo, {"eval": {"tool": False}})
    assert stages_to_run(repo) == {"evaluate", "evaluate-task@0", "evaluate-task@1"}


def test_the_export_stage_folder_loads_in_transformers_as_chat_pt(repo: Path) -> None:
    # The trained tiny pipeline's chat model, as `dvc repro` exported it.
    transformers = pytest.importorskip("transformers")
    from xinslm.chat_template import render_prompt
    from xinslm.checkpoint import load_checkpoint, model_from_checkpoint
    from xinslm.generate import generate
    from xinslm.sampling import Sampling
    from xinslm.tokenizer import ByteTokenizer

    folder = repo / "export/hf"
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        folder, trust_remote_code=True, dtype=torch.float32
    ).eval()
    model = model_from_checkpoint(load_checkpoint(repo / "checkpoints/chat.pt")).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 16))
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, model(ids)[0], atol=1e-5, rtol=0)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    conversation = [{"role": "user", "content": "What is 2 plus 3?"}]
    prompt = render_prompt(conversation, ByteTokenizer())
    theirs = tokenizer.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=True, sanitize_control_tokens=True
    )
    assert list(theirs["input_ids"] if hasattr(theirs, "keys") else theirs) == prompt
    ours = list(generate(model, prompt, Sampling(max_new_tokens=32, temperature=0)))
    out = hf.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False)
    theirs = out[0, len(prompt) :].tolist()  # up to <|end|>, its eos, where it stops
    assert len(theirs) > 3 and theirs == ours[: len(theirs)]
