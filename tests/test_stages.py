"""Stage scripts on bad input: one line on stderr naming file, line or key; exit 1; no
traceback; and no output written."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
GOOD_CHAT = (
    '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A folder laid out like the repo: params.yaml and small inputs."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "example_data_text.txt").write_text("Some text.\n" * 200)
    (tmp_path / "data" / "example_data_chat.jsonl").write_text(GOOD_CHAT * 10)
    (tmp_path / "data" / "example_data_chat_val.jsonl").write_text(GOOD_CHAT * 2)
    return tmp_path


def run_stage(name: str, cwd: Path) -> subprocess.CompletedProcess:
    script = ROOT / "stages" / f"{name}.py"
    return subprocess.run([sys.executable, script], cwd=cwd, capture_output=True, text=True)


def assert_clean_failure(proc: subprocess.CompletedProcess, message: str, cwd: Path) -> None:
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr == f"error: {message}\n"
    leftovers = [p.name for p in (cwd / "data").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def set_param(cwd: Path, section: str, key: str, value) -> None:
    params = yaml.safe_load((cwd / "params.yaml").read_text())
    params[section][key] = value
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))


def test_good_inputs_make_the_artifacts(workdir: Path) -> None:
    for stage in ("tokenize-text", "pack", "render-chat"):
        proc = run_stage(stage, workdir)
        assert proc.returncode == 0, proc.stderr
    for out in ("tokens", "blocks", "chat"):
        assert (workdir / "data" / out / "meta.json").is_file()


@pytest.mark.parametrize(
    ("line3", "problem"),
    [
        ('{"messages": [', "malformed JSON: Expecting value at column 15"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"messages": []}', "field 'messages' must be a non-empty list"),
        (
            '{"messages": [{"role": "robot", "content": "x"}]}',
            "messages[0].role: 'robot' is not one of system, user, assistant",
        ),
        (
            '{"messages": [{"role": "user", "content": 5}]}',
            "messages[0].content must be a string, got int",
        ),
        (
            '{"messages": [{"role": "user", "content": "x"}]}',
            "no assistant message: nothing to learn",
        ),
    ],
)
def test_bad_chat_record_names_file_and_line(workdir: Path, line3: str, problem: str) -> None:
    chat = workdir / "data" / "example_data_chat.jsonl"
    chat.write_text(GOOD_CHAT * 2 + line3 + "\n" + GOOD_CHAT)
    proc = run_stage("render-chat", workdir)
    expected = (
        f"data/example_data_chat.jsonl:3: {problem} (set chat.on_error: skip to skip such records)"
    )
    assert_clean_failure(proc, expected, workdir)
    assert not (workdir / "data" / "chat").exists()


def test_bad_chat_record_skipped_when_asked(workdir: Path) -> None:
    chat = workdir / "data" / "example_data_chat.jsonl"
    chat.write_text(GOOD_CHAT * 2 + "not json\n" + GOOD_CHAT * 7)
    set_param(workdir, "chat", "on_error", "skip")
    proc = run_stage("render-chat", workdir)
    assert proc.returncode == 0, proc.stderr
    assert "render-chat: 9 train and 2 val conversations" in proc.stdout
    assert "(1 skipped, 0 truncated, 0 dropped)" in proc.stdout
    assert "skipped data/example_data_chat.jsonl:3: malformed JSON" in proc.stdout


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "data/example_data_text.txt: file is empty"),
        (
            b"ok line\n" * 10 + b"bad \xff byte\n",
            "data/example_data_text.txt: not valid UTF-8 at byte 84 (invalid start byte)",
        ),
    ],
)
def test_bad_text_file(workdir: Path, content: bytes, message: str) -> None:
    (workdir / "data" / "example_data_text.txt").write_bytes(content)
    proc = run_stage("tokenize-text", workdir)
    assert_clean_failure(proc, message, workdir)
    assert not (workdir / "data" / "tokens").exists()


def test_missing_text_file(workdir: Path) -> None:
    (workdir / "data" / "example_data_text.txt").unlink()
    proc = run_stage("tokenize-text", workdir)
    message = "data/example_data_text.txt: text input not found (set text.input in params.yaml)"
    assert_clean_failure(proc, message, workdir)


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("model", "n_kv_head", 3, "params.yaml: model.n_kv_head: 3 does not divide n_head 4"),
        ("pretrain", "lr", -0.1, "params.yaml: pretrain.lr: must be > 0, got -0.1"),
        (
            "pretrain",
            "compile",
            "yes",
            "params.yaml: pretrain.compile: expected bool, got str 'yes'",
        ),
    ],
)
def test_bad_params(workdir: Path, section: str, key: str, value, message: str) -> None:
    for stage in ("tokenize-text", "pack"):
        assert run_stage(stage, workdir).returncode == 0
    set_param(workdir, section, key, value)
    proc = run_stage("pretrain", workdir)
    assert_clean_failure(proc, message, workdir)
    assert not (workdir / "checkpoints").exists()


def test_sft_without_base_checkpoint(workdir: Path) -> None:
    assert run_stage("render-chat", workdir).returncode == 0
    proc = run_stage("sft", workdir)
    assert_clean_failure(proc, "checkpoints/base.pt: checkpoint not found", workdir)
