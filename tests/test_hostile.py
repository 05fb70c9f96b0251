"""Hostile input: each case runs a stage script on one bad input and checks the one-line message
naming file, line or key, exit code 1, that no traceback is printed, and that no output or
temporary file is left behind (and nothing in a checkpoint ran).

The cases run in this process (conftest.run_stage: runpy, run_main's SystemExit caught); one
case per stage runs again as a real process (conftest.run_stage_process), for run_main's exit
code and stderr as `python stages/<name>.py` gives them. Deleting any key from params.yaml makes
the stage that reads it fail naming the key: one key of each section is checked."""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, run_stage, run_stage_ok, run_stage_process, set_params, token_ids

from xinslm import memory

GOOD_CHAT = (
    '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
)
# Issue 18's record: a lone surrogate escape, valid JSON but not valid Unicode.
SURROGATE_CHAT = (
    '{"messages": [{"role": "user", "content": "\\ud800"}, '
    '{"role": "assistant", "content": "hi"}]}\n'
)
TEXT = "data/example_data_text.txt"
CHAT = "data/example_data_chat.jsonl"
SKIP_HINT = " (set chat.on_error: skip to skip such records)"
TINY_MODEL = {"context_len": 32, "n_layer": 1, "n_head": 2, "n_kv_head": 1, "n_embd": 16}
OUTPUTS = {
    "tokenize-text": "data/tokens",
    "pack": "data/blocks",
    "render-chat": "data/chat",
    "pretrain": "checkpoints/base.pt",
    "sft": "checkpoints/chat.pt",
    "evaluate": "eval",
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A folder laid out like the repo, with good small inputs already tokenized, packed and
    rendered, and a tiny base checkpoint."""
    work = tmp_path_factory.mktemp("hostile") / "prepared"
    (work / "data").mkdir(parents=True)
    shutil.copy(REPO / "params.yaml", work / "params.yaml")
    (work / TEXT).write_text("Some text.\n" * 200)
    (work / CHAT).write_text(GOOD_CHAT * 10)
    (work / "data" / "example_data_chat_val.jsonl").write_text(GOOD_CHAT * 2)
    set_params(work, "model", **TINY_MODEL)
    set_params(work, "pretrain", max_steps=2)
    for stage in ("tokenize-text", "pack", "render-chat", "pretrain"):
        run_stage_ok(stage, work)
    return work


@pytest.fixture
def workdir(prepared: Path, tmp_path: Path) -> Path:
    work = tmp_path / "work"
    shutil.copytree(prepared, work)
    return work


def write(path: str, content: str | bytes) -> Callable[[Path], None]:
    def setup(work: Path) -> None:
        target = work / path
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)

    return setup


def chat_line(line: str) -> Callable[[Path], None]:
    """The chat file with `line` as its third line."""
    return write(CHAT, GOOD_CHAT * 2 + line + "\n" + GOOD_CHAT)


def param(section: str, key: str, value) -> Callable[[Path], None]:
    return lambda work: set_params(work, section, **{key: value})


def edit_params_doc(work: Path, edit: Callable[[dict], None]) -> None:
    """Apply `edit` to the whole parsed params.yaml of `work`."""
    path = work / "params.yaml"
    doc = yaml.safe_load(path.read_text())
    edit(doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def without_section(section: str) -> Callable[[Path], None]:
    return lambda work: edit_params_doc(work, lambda doc: doc.pop(section))


def remove(path: str) -> Callable[[Path], None]:
    def setup(work: Path) -> None:
        target = work / path
        shutil.rmtree(target) if target.is_dir() else target.unlink()

    return setup


def tokenized(text: bytes) -> Callable[[Path], None]:
    def setup(work: Path) -> None:
        (work / TEXT).write_bytes(text)
        run_stage_ok("tokenize-text", work)

    return setup


def text_dir_without_txt(work: Path) -> None:
    (work / "corpus").mkdir()
    (work / "corpus" / "notes.md").write_text("text\n")
    set_params(work, "text", input="corpus")


class RunsCode:
    """Unpickling this calls open(marker, 'w'): a checkpoint that tries to run code on load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def base_checkpoint(make: Callable[[Path], object]) -> Callable[[Path], None]:
    def setup(work: Path) -> None:
        torch.save(make(work), work / "checkpoints" / "base.pt")

    return setup


def other_tokenizer_checkpoint(work: Path) -> dict:
    ckpt = torch.load(work / "checkpoints" / "base.pt", weights_only=True)
    ckpt["tokenizer"] = {**ckpt["tokenizer"], "name": "gpt2", "vocab_size": 50262}
    return ckpt


def truncate_base(work: Path) -> None:
    path = work / "checkpoints" / "base.pt"
    path.write_bytes(path.read_bytes()[:1000])


BASE = "checkpoints/base.pt"
CASES = [
    # --- text -----------------------------------------------------------------------------
    ("text-empty", "tokenize-text", write(TEXT, b""), f"{TEXT}: file is empty"),
    (
        "text-missing",
        "tokenize-text",
        remove(TEXT),
        f"{TEXT}: text input not found (set text.input in params.yaml)",
    ),
    (
        "text-dir-without-txt",
        "tokenize-text",
        text_dir_without_txt,
        "corpus: directory holds no .txt, .jsonl or .parquet files",
    ),
    (
        "text-not-utf8",
        "tokenize-text",
        write(TEXT, b"ok line\n" * 10 + b"bad \xff byte\n"),
        f"{TEXT}: not valid UTF-8 at byte 84 (invalid start byte); fix the file, or set "
        "text.utf8_errors: replace to read bad bytes as U+FFFD",
    ),
    (
        "text-too-short-for-a-block",
        "pack",
        tokenized(b"x\n" * 10),
        "data/tokens: 19 train tokens make no block of context_len+1 = 33; lower "
        "model.context_len or add text",
    ),
    # --- chat -----------------------------------------------------------------------------
    (
        "chat-truncated-json",
        "render-chat",
        chat_line('{"messages": [{"role": "user"'),
        f"{CHAT}:3: malformed JSON: Expecting ',' delimiter at column 30{SKIP_HINT}",
    ),
    (
        "chat-not-an-object",
        "render-chat",
        chat_line("[1, 2]"),
        f"{CHAT}:3: expected a JSON object, got list{SKIP_HINT}",
    ),
    (
        "chat-no-messages",
        "render-chat",
        chat_line('{"text": "hi"}'),
        f"{CHAT}:3: missing field 'messages'{SKIP_HINT}",
    ),
    (
        "chat-messages-not-a-list",
        "render-chat",
        chat_line('{"messages": "hi"}'),
        f"{CHAT}:3: field 'messages' must be a non-empty list{SKIP_HINT}",
    ),
    (
        "chat-message-not-an-object",
        "render-chat",
        chat_line('{"messages": ["hi"]}'),
        f"{CHAT}:3: messages[0] must be an object with 'role' and 'content'{SKIP_HINT}",
    ),
    (
        "chat-content-not-a-string",
        "render-chat",
        chat_line('{"messages": [{"role": "user", "content": 5}]}'),
        f"{CHAT}:3: messages[0].content must be a string or a list of text parts, got int"
        f"{SKIP_HINT}",
    ),
    (
        "chat-unknown-role",
        "render-chat",
        chat_line('{"messages": [{"role": "robot", "content": "x"}]}'),
        f"{CHAT}:3: messages[0].role: 'robot' is not one of system, user, assistant{SKIP_HINT}",
    ),
    (
        "chat-system-not-first",
        "render-chat",
        chat_line(
            '{"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]}'
        ),
        f"{CHAT}:3: messages[1].role: a system message may only come first{SKIP_HINT}",
    ),
    (
        "chat-same-role-twice",
        "render-chat",
        chat_line(
            '{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}'
        ),
        f"{CHAT}:3: messages[1].role: expected 'assistant' after user{SKIP_HINT}",
    ),
    (
        "chat-no-assistant",
        "render-chat",
        chat_line('{"messages": [{"role": "user", "content": "x"}]}'),
        f"{CHAT}:3: no assistant message: nothing to learn{SKIP_HINT}",
    ),
    (
        "chat-not-utf8",
        "render-chat",
        write(CHAT, GOOD_CHAT.encode() * 2 + b'{"messages": "\xff"}\n'),
        f"{CHAT}:3: not valid UTF-8 (invalid start byte at column 15); set chat.utf8_errors: "
        f"replace to read bad bytes as U+FFFD{SKIP_HINT}",
    ),
    (
        "chat-lone-surrogate",
        "render-chat",
        chat_line(SURROGATE_CHAT.strip()),
        f"{CHAT}:3: messages[0].content: lone surrogate \\ud800 (character 1) is not valid "
        f"Unicode; set chat.utf8_errors: replace to read it as U+FFFD{SKIP_HINT}",
    ),
    (
        "chat-tool-calls",
        "render-chat",
        chat_line(
            '{"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", '
            '"content": null, "tool_calls": [{"id": "c1", "type": "function"}]}]}'
        ),
        f"{CHAT}:3: messages[1].tool_calls: tool calls cannot be rendered by this chat template "
        "(its one tool is the calculator, written <<expr=result>> in an assistant's content)"
        f"{SKIP_HINT}",
    ),
    ("chat-empty", "render-chat", write(CHAT, "\n\n"), f"{CHAT}: no valid conversations"),
    (
        "chat-missing",
        "render-chat",
        remove(CHAT),
        f"{CHAT}: chat file not found (set chat.input in params.yaml)",
    ),
    # --- params ---------------------------------------------------------------------------
    (
        "params-unknown-key",
        "pack",
        param("model", "n_layers", 4),
        "params.yaml: unknown key 'model.n_layers' (known keys: context_len, depth, "
        "dropout, logit_softcap, n_embd, n_head, n_kv_head, n_layer)",
    ),
    (
        "params-wrong-type",
        "pretrain",
        param("pretrain", "max_steps", "ten"),
        "params.yaml: pretrain.max_steps: expected int, got str 'ten'",
    ),
    (
        "params-n-head-does-not-divide",
        "pretrain",
        param("model", "n_head", 3),
        "params.yaml: model.n_head: 3 does not divide n_embd 16",
    ),
    (
        "params-n-kv-head-does-not-divide",
        "pretrain",
        param("model", "n_kv_head", 3),
        "params.yaml: model.n_kv_head: 3 does not divide n_head 2",
    ),
    (
        "params-negative-lr",
        "sft",
        param("sft", "lr", -0.1),
        "params.yaml: sft.lr: must be > 0, got -0.1",
    ),
    (
        "params-bad-choice",
        "render-chat",
        param("chat", "overlong", "wrap"),
        "params.yaml: chat.overlong: 'wrap' is not one of truncate, drop",
    ),
    (
        "params-not-yaml",
        "pack",
        write("params.yaml", "model: [unclosed\n"),
        "params.yaml: not valid YAML: while parsing a flow sequence",
    ),
    (
        "params-missing-section",
        "pretrain",
        without_section("pretrain"),
        "params.yaml: missing section 'pretrain'",
    ),
    # --- checkpoints ----------------------------------------------------------------------
    (
        "checkpoint-missing",
        "sft",
        remove(BASE),
        f"{BASE}: checkpoint not found",
    ),
    (
        "checkpoint-truncated",
        "sft",
        truncate_base,
        f"{BASE}: unreadable or truncated checkpoint (",
    ),
    (
        "checkpoint-garbage",
        "sft",
        write(BASE, b"\x00garbage" * 100),
        f"{BASE}: refused to load: not a plain xinslm checkpoint (corrupt, or holding objects "
        "that would run code on load)",
    ),
    (
        "checkpoint-runs-code",
        "sft",
        base_checkpoint(lambda work: {"format": RunsCode(work / "PWNED")}),
        f"{BASE}: refused to load: not a plain xinslm checkpoint (corrupt, or holding objects "
        "that would run code on load)",
    ),
    (
        "checkpoint-not-xinslm",
        "sft",
        base_checkpoint(lambda work: {"weights": torch.zeros(3)}),
        f"{BASE}: not an xinslm checkpoint",
    ),
    (
        "checkpoint-other-tokenizer",
        "sft",
        base_checkpoint(other_tokenizer_checkpoint),
        "data/chat/meta.json: made with tokenizer name='byte', but 'gpt2' is expected; rerun "
        "the pipeline (dvc repro)",
    ),
]
BY_ID = {name: case for name, *case in CASES}
# The case of each stage that also runs as a real process.
END_TO_END = {
    "tokenize-text": "text-not-utf8",
    "pack": "text-too-short-for-a-block",
    "render-chat": "chat-truncated-json",
    "pretrain": "params-wrong-type",
    "sft": "checkpoint-runs-code",
}


def run_quiet(stage: str, work: Path):
    """run_stage, failing on a warning that `python stages/<name>.py` would print: there it
    would be a second line on stderr, here pytest would record it instead. (Python's default
    filters: deprecations only from __main__, no ImportWarning or ResourceWarning.)"""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)
        for category in quiet:
            warnings.filterwarnings("ignore", category=category)
        warnings.filterwarnings("always", category=DeprecationWarning, module="__main__")
        proc = run_stage(stage, work)
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []
    return proc


def remove_output(work: Path, stage: str) -> Path:
    output = work / OUTPUTS[stage]
    if output.is_dir():
        shutil.rmtree(output)
    elif output.exists():
        output.unlink()
    return output


def assert_refused(proc, work: Path, output: Path, message: str) -> None:
    """A one-line `error: <message>...`, exit 1, and nothing written or executed."""
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: {message}"), proc.stderr
    assert proc.stderr.count("\n") == 1  # one line
    assert not output.exists()  # nothing half-written ...
    leftovers = [p for p in work.rglob(".*") if p.name.endswith(".tmp")]
    assert leftovers == []  # ... and no temporary file left
    assert not (work / "PWNED").exists()  # nothing from a checkpoint was executed


@pytest.mark.parametrize(("stage", "setup", "message"), list(BY_ID.values()), ids=list(BY_ID))
def test_hostile_input(workdir: Path, stage: str, setup, message: str) -> None:
    output = remove_output(workdir, stage)
    setup(workdir)
    assert_refused(run_quiet(stage, workdir), workdir, output, message)


@pytest.mark.parametrize(("stage", "case"), END_TO_END.items(), ids=list(END_TO_END.values()))
def test_hostile_input_end_to_end(workdir: Path, stage: str, case: str) -> None:
    case_stage, setup, message = BY_ID[case]
    assert case_stage == stage
    output = remove_output(workdir, stage)
    setup(workdir)
    assert_refused(run_stage_process(stage, workdir), workdir, output, message)


MISSING_KEY = (
    "params.yaml: missing key '{}': params.yaml holds every value in effect, so each key must "
    "be set (the README's parameter tables list them)"
)


# One key of each section, deleted, through a stage that reads it.
MISSING_KEYS = {
    "tokenizer.name": "tokenize-text",
    "text.chunk_bytes": "tokenize-text",
    "model.context_len": "pack",
    "chat.overlong": "render-chat",
    "pretrain.shift_blocks": "pretrain",
    "sft.lr": "sft",
    "eval.top_p": "evaluate",  # load_params comes first: no chat.pt needed
}


@pytest.mark.parametrize(("key", "stage"), MISSING_KEYS.items(), ids=list(MISSING_KEYS))
def test_missing_key_fails_naming_it(workdir: Path, key: str, stage: str) -> None:
    section, name = key.split(".")
    output = remove_output(workdir, stage)
    edit_params_doc(workdir, lambda doc: doc[section].pop(name))
    proc = run_quiet(stage, workdir)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr == f"error: {MISSING_KEY.format(key)}\n"
    assert not output.exists()
    assert [p for p in workdir.rglob(".*") if p.name.endswith(".tmp")] == []


def test_bad_chat_record_skipped_when_asked(workdir: Path) -> None:
    (workdir / CHAT).write_text(GOOD_CHAT * 2 + "not json\n" + GOOD_CHAT * 7)
    set_params(workdir, "chat", on_error="skip")
    proc = run_stage_ok("render-chat", workdir)
    assert "render-chat: 9 train and 2 val conversations" in proc.stdout
    assert "(1 skipped, 0 truncated, 0 dropped)" in proc.stdout
    assert f"skipped {CHAT}:3: malformed JSON" in proc.stdout


def test_lone_surrogate_replaced_when_asked(workdir: Path) -> None:
    (workdir / CHAT).write_text(SURROGATE_CHAT + GOOD_CHAT)
    set_params(workdir, "chat", utf8_errors="replace")
    proc = run_stage_ok("render-chat", workdir)
    assert "render-chat: 2 train and 2 val conversations" in proc.stdout
    ids = np.fromfile(workdir / "data" / "chat" / "train_ids.bin", dtype=np.uint16)
    assert bytes(ids[3:6].astype(np.uint8)) == "\ufffd".encode()  # after <|bos|><|user|>\n


def test_openai_name_field_is_ignored(workdir: Path) -> None:
    named = GOOD_CHAT.replace('"content": "hi"}', '"content": "hi", "name": "ann"}')
    assert '"name": "ann"' in named
    (workdir / CHAT).write_text(named * 3)
    proc = run_stage_ok("render-chat", workdir)
    assert "render-chat: 3 train and 2 val conversations" in proc.stdout
    ids = np.fromfile(workdir / "data" / "chat" / "train_ids.bin", dtype=np.uint16)
    assert b"ann" not in bytes(ids.astype(np.uint8))


def test_bad_utf8_replaced_when_asked(workdir: Path) -> None:
    (workdir / TEXT).write_bytes(b"ok line\n" * 10 + b"bad \xff byte\n")
    set_params(workdir, "text", utf8_errors="replace")
    run_stage_ok("tokenize-text", workdir)
    ids = token_ids(workdir / "data" / "tokens", "train")
    assert bytes(ids[1:]).endswith("bad \ufffd byte\n".encode())


# The row and sft's: a model or micro-batch that cannot fit is refused before anything
# is built, naming its numbers and the keys to change (the memory free is faked at 20 GiB, so
# the message does not depend on this machine; tests/test_memory.py checks the estimate).
TOO_LARGE = {
    "pretrain": (
        param("model", "n_embd", 1_000_000),
        "pretrain: the model does not fit: 11,000,530,000,000 parameters need about 212,349.4 "
        "GiB (weights 40,980.2 GiB, optimizer 40,982.1 GiB, then activations 7,494.5 GiB or "
        "gradients 40,980.2 GiB and Muon's step 89,407.0 GiB), but 20.0 GiB is available on "
        "cpu; make it smaller: model.n_embd, model.n_layer, pretrain.batch_size (grad_accum "
        "keeps the tokens per step), model.context_len",
    ),
    "sft": (
        param("sft", "batch_size", 10**9),
        "sft: the model does not fit: 11,296 parameters need about 170,469.3 GiB (weights 0.0 "
        "MiB, optimizer 0.1 MiB, then activations 170,469.3 GiB or gradients 0.0 MiB and Muon's "
        "step 0.0 MiB), but 20.0 GiB is available on cpu; make it smaller: sft.batch_size, "
        "sft.text_rows, or a smaller base model (model.*, then pretrain)",
    ),
}


@pytest.mark.parametrize("stage", TOO_LARGE)
def test_a_model_that_cannot_fit_is_refused(workdir: Path, monkeypatch, stage: str) -> None:
    setup, message = TOO_LARGE[stage]
    monkeypatch.setattr(memory, "available_bytes", lambda device: 20 * memory.GIB)
    output = remove_output(workdir, stage)
    setup(workdir)
    before = sorted((workdir / "checkpoints").rglob("*"))
    assert_refused(run_quiet(stage, workdir), workdir, output, message)
    assert sorted((workdir / "checkpoints").rglob("*")) == before  # nothing written there
