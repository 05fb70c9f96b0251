"""The DVC pipeline end to end, in a throwaway copy of the repo with a tiny model:
`dvc repro` runs every stage once, then reruns exactly the stages an edit touches."""

from __future__ import annotations

import csv
import io
import json
import os
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
SHARED = Path(os.environ.get("XINSLM_SHARED_DATA", ROOT.parent / "shared" / "data")).resolve()
ALL_STAGES = {
    "train-tokenizer",
    "tokenize-text",
    "pack",
    "pretrain",
    "render-chat",
    "sft",
    "evaluate",
}

# Small enough that the whole pipeline trains in seconds on two CPU cores.
TINY = {
    "model": {"n_layer": 1, "n_head": 2, "n_kv_head": 1, "n_embd": 32},
    "pretrain": {"max_steps": 4, "batch_size": 4, "eval_every": 2, "eval_batches": 1},
    "sft": {"max_steps": 3, "batch_size": 4, "eval_every": 2, "eval_batches": 1},
    "eval": {"max_new_tokens": 8, "prompts": ["What is 2 plus 3?"], "base_prompts": ["The"]},
}


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    # `dvc exp run` commits experiments: give git an identity even on a bare CI machine.
    for who in ("AUTHOR", "COMMITTER"):
        env.setdefault(f"GIT_{who}_NAME", "xinslm tests")
        env.setdefault(f"GIT_{who}_EMAIL", "tests@xinslm.invalid")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def edit_params(repo: Path, changes: dict) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in changes.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def stages_to_run(repo: Path) -> set[str]:
    """The stages `dvc repro --dry` plans from what changed so far (not yet what they change)."""
    out = run(["dvc", "repro", "--dry"], repo).stdout
    return set(re.findall(r"Running stage '([^']+)'", out))


def stages_rerun(repo: Path) -> set[str]:
    """The stages a real `dvc repro` runs: an unchanged output stops the rerun there."""
    out = run(["dvc", "repro"], repo).stdout
    return set(re.findall(r"Running stage '([^']+)'", out))


def make_repo(repo: Path) -> Path:
    """A git repo at `repo`: the committed tree plus the working copy's files, tiny params,
    one full `dvc repro` done and committed. tests/test_remote.py builds its repo with it too."""
    files = run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], ROOT).stdout
    for name in files.split():
        if (ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    # Start from nothing run: no lock file, no metrics from the real params.
    (repo / "dvc.lock").unlink(missing_ok=True)
    shutil.rmtree(repo / "dvclive", ignore_errors=True)
    edit_params(repo, TINY)
    run(["git", "init", "-q"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "init"], repo)
    run(["dvc", "repro"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "repro"], repo)
    return repo


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return make_repo(tmp_path_factory.mktemp("pipeline") / "repo")


@pytest.fixture
def clean(repo: Path):
    """Give the test the repo, and put every tracked file back afterwards."""
    yield repo
    run(["git", "checkout", "--", "."], repo)
    run(["dvc", "checkout", "--quiet"], repo)
    assert stages_to_run(repo) == set()


def test_repro_writes_checkpoints_and_then_has_nothing_to_do(repo: Path) -> None:
    assert (repo / "checkpoints/base.pt").is_file()
    assert (repo / "checkpoints/chat.pt").is_file()
    out = run(["dvc", "repro"], repo).stdout
    assert "Data and pipelines are up to date." in out
    assert not re.search(r"Running stage", out)


def test_sft_lr_edit_reruns_sft_only_and_params_diff_shows_it(clean: Path) -> None:
    edit_params(clean, {"sft": {"lr": 0.0005}})
    assert stages_to_run(clean) == {"sft"}  # --dry lists what changed directly
    assert stages_rerun(clean) == {"sft", "evaluate"}
    diff = json.loads(run(["dvc", "params", "diff", "--json"], clean).stdout)
    assert diff["params.yaml"] == {"sft.lr": {"old": 0.002, "new": 0.0005, "diff": -0.0015}}


def test_context_len_edit_keeps_tokenize_text(clean: Path) -> None:
    edit_params(clean, {"model": {"context_len": 128}})
    assert stages_rerun(clean) == {"pack", "pretrain", "render-chat", "sft", "evaluate"}


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"pretrain": {"lr": 0.002}}, {"pretrain", "sft", "evaluate"}),
        ({"chat": {"overlong": "drop"}}, {"render-chat"}),  # nothing is too long: same output
        (
            {"chat": {"input": "data/example_data_chat_val.jsonl"}},
            {"render-chat", "sft", "evaluate"},
        ),
        ({"eval": {"temperature": 0.0}}, {"evaluate"}),
        # The byte tokenizer does not read the BPE's params: only train-tokenizer's note reruns.
        ({"tokenizer": {"vocab_size": 300}}, {"train-tokenizer"}),
        ({"text": {"val_fraction": 0.2}}, ALL_STAGES - {"render-chat"}),
        ({"tokenizer": {"name": "gpt2", "encodings_dir": str(SHARED / "tiktoken")}}, ALL_STAGES),
    ],
)
def test_param_edit_reruns_exactly(clean: Path, changes: dict, expected: set) -> None:
    if "tokenizer" in changes and not (SHARED / "tiktoken" / "r50k_base.tiktoken").is_file():
        pytest.skip(f"gpt2 encoding file not found under {SHARED}/tiktoken (XINSLM_SHARED_DATA)")
    edit_params(clean, changes)
    assert stages_rerun(clean) == expected


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        # A stage whose code changed reruns; when its output comes out byte-identical (same
        # inputs, deterministic code), DVC stops there: sft is skipped after render-chat, and
        # evaluate after sft.
        ("xinslm/chat.py", {"render-chat", "evaluate"}),
        ("xinslm/model.py", {"pretrain", "sft", "evaluate"}),
        ("xinslm/text.py", {"train-tokenizer", "tokenize-text", "pack"}),
        ("stages/sft.py", {"sft"}),
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
    assert meta["tokenizer"]["name"] == "bpe" and meta["tokenizer"]["vocab_size"] == 305
    edit_params(clean, {"tokenizer": {"vocab_size": 320}})
    assert stages_rerun(clean) == ALL_STAGES
    assert stages_rerun(clean) == set()


def test_killed_pretrain_continues_under_dvc_repro(clean: Path) -> None:
    edit_params(clean, {"pretrain": {"max_steps": 300, "checkpoint_every": 10}})
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    proc = subprocess.Popen(
        ["dvc", "repro", "pretrain"],
        cwd=clean,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    resume = clean / "checkpoints/resume/pretrain.pt"
    while not resume.exists():
        assert proc.poll() is None, "pretrain ended before its first resume checkpoint"
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)  # dvc and the stage: the machine died
    proc.wait()

    out = run(["dvc", "repro", "pretrain"], clean).stdout
    assert "Running stage 'pretrain'" in out
    assert "pretrain: resuming from checkpoints/resume/pretrain.pt at step" in out
    assert not resume.exists()
    resumed = (clean / "checkpoints/base.pt").read_bytes()
    # The same stage never interrupted (DVC's run cache would just restore the output).
    run(["dvc", "repro", "--force", "--no-run-cache", "--single-item", "pretrain"], clean)
    assert (clean / "checkpoints/base.pt").read_bytes() == resumed


def test_sft_starts_from_base_checkpoint(repo: Path) -> None:
    base = torch.load(repo / "checkpoints/base.pt", weights_only=True)
    chat = torch.load(repo / "checkpoints/chat.pt", weights_only=True)
    assert chat["model_config"] == base["model_config"]
    assert chat["tokenizer"] == base["tokenizer"]
    assert chat["base_step"] == base["step"] == TINY["pretrain"]["max_steps"]
    assert chat["step"] == TINY["sft"]["max_steps"]
    # Adam moves each weight by about lr per step at most: 3 steps at lr 1e-3 stay within
    # 0.005 of the base weights, while a fresh init differs by O(1).
    for name, w in base["model"].items():
        delta = (chat["model"][name] - w).abs().max().item()
        assert delta < 0.005, name
    assert any((chat["model"][k] != w).any() for k, w in base["model"].items())


def test_metrics_and_exp_run(repo: Path) -> None:
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
