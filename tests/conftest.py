"""Shared helpers: the real data, tokenizers that skip when their files are absent, stage runs
(in this process, or as a subprocess for the end-to-end cases), scratch copies of the inputs,
params edits, tiny models, and `xinslm serve` running in this process."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import os
import runpy
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import settings

from xinslm.batches import shifted_labels
from xinslm.chat_template import render_conversation
from xinslm.checkpoint import save_checkpoint
from xinslm.config import ChatParams, load_params
from xinslm.model import ModelConfig
from xinslm.render_chat import render_chat
from xinslm.step import TrainStep
from xinslm.tokenizer import TIKTOKEN_ENCODINGS, ByteTokenizer, get_tokenizer

REPO = Path(__file__).resolve().parents[1]

# In CI the property tests draw the same examples every run (each test sets its own budget),
# so a red build is reproducible; locally they explore new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

# The tests' tensors are tiny: intra-op threads only add overhead (20x slower on 2 cores).
torch.set_num_threads(1)


def shared_data() -> Path:
    """The shared real-data folder: $XINSLM_SHARED_DATA, else ../shared/data from the repo."""
    env = os.environ.get("XINSLM_SHARED_DATA")
    return Path(env) if env else REPO / ".." / "shared" / "data"


# --- stages -------------------------------------------------------------------------------


@dataclasses.dataclass
class StageRun:
    returncode: int
    stdout: str
    stderr: str


def run_stage(name: str, cwd: Path) -> StageRun:
    """Run stages/<name>.py in this process, in `cwd`, as `python stages/<name>.py` would:
    its exit code (0, or what run_main exits with), stdout and stderr."""
    script = str(REPO / "stages" / f"{name}.py")
    out, err, code = io.StringIO(), io.StringIO(), 0
    argv, cwd_before = sys.argv, os.getcwd()
    try:
        sys.argv = [script]
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = argv
        os.chdir(cwd_before)
    return StageRun(code, out.getvalue(), err.getvalue())


def stage_command(name: str) -> list[str]:
    return [sys.executable, str(REPO / "stages" / f"{name}.py")]


def run_stage_process(name: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run stages/<name>.py as its own process (the end-to-end cases)."""
    return subprocess.run(stage_command(name), cwd=cwd, capture_output=True, text=True)


def run_stage_ok(name: str, cwd: Path, nproc: int = 1):
    """Run a stage and require exit 0: in this process with one process, else as a real one
    (several go through torchrun)."""
    proc = run_stage(name, cwd) if nproc == 1 else run_stage_process(name, cwd)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def scratch_inputs(work: Path) -> Path:
    """A new folder `work` holding params.yaml and the bundled data, without stage outputs:
    the stage scripts run there as in the repo."""
    work.mkdir(parents=True)
    shutil.copy(REPO / "params.yaml", work / "params.yaml")
    shutil.copytree(
        REPO / "data",
        work / "data",
        ignore=shutil.ignore_patterns("tokens", "token-store", "blocks", "chat", "tokenizer"),
    )
    return work


def set_params(cwd: Path, section: str, **values: object) -> None:
    """Set keys of one section of cwd/params.yaml."""
    path = cwd / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params[section].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


# --- DVC repos ----------------------------------------------------------------------------

# The tiny pipeline has no tasks (eval.tasks: []), so no evaluate-task stages: each costs a
# process per rerun, and the tests that need them add tasks (test_pipeline's task test).
ALL_STAGES = {
    "train-tokenizer",
    "tokenize-text",
    "pack",
    "pretrain",
    "render-chat",
    "sft",
    "export",
    "evaluate",
}
ANSWER_TASK = {
    "name": "arithmetic",
    "kind": "answer",
    "path": "data/example_task_answer.jsonl",
    "limit": 4,
    "samples": 1,
}
# Small enough that the whole pipeline trains in seconds on two CPU cores.
TINY_PIPELINE = {
    "model": {"n_layer": 1, "n_head": 2, "n_kv_head": 1, "n_embd": 32},
    # A log point every step: from the second on, each has tokens/s (tests/test_plots.py).
    "pretrain": {
        "max_steps": 4,
        "batch_size": 4,
        "eval_every": 2,
        "eval_batches": 1,
        "log_every": 1,
    },
    "sft": {"max_steps": 3, "batch_size": 4, "eval_every": 2, "eval_batches": 1, "log_every": 1},
    "eval": {
        "max_new_tokens": 8,
        "prompts": ["What is 2 plus 3?"],
        "base_prompts": ["The"],
        "tasks": [],
    },
}


def command_env() -> dict[str, str]:
    """The environment for dvc and git: this venv's tools first, a git identity on bare CI."""
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    for who in ("AUTHOR", "COMMITTER"):  # `dvc exp run` commits experiments
        env.setdefault(f"GIT_{who}_NAME", "xinslm tests")
        env.setdefault(f"GIT_{who}_EMAIL", "tests@xinslm.invalid")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command (dvc, git) in `cwd`; with check, a failure shows its output."""
    proc = subprocess.run(cmd, cwd=cwd, env=command_env(), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def edit_params(repo: Path, changes: dict) -> None:
    """Apply {section: {key: value}} to repo/params.yaml."""
    for section, values in changes.items():
        set_params(repo, section, **values)


def copy_working_tree(repo: Path) -> None:
    """The working copy's tracked and new (not ignored) files, copied to `repo`."""
    files = run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], REPO).stdout
    for name in files.split():
        if (REPO / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, repo / name)


def make_repo(repo: Path) -> Path:
    """A git repo at `repo`: the committed tree plus the working copy's files, tiny params,
    one full `dvc repro` done and committed."""
    copy_working_tree(repo)
    # Start from nothing run: no lock file, no metrics from the real params.
    (repo / "dvc.lock").unlink(missing_ok=True)
    shutil.rmtree(repo / "dvclive", ignore_errors=True)
    edit_params(repo, TINY_PIPELINE)
    run(["git", "init", "-q"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "init"], repo)
    run(["dvc", "repro"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "repro"], repo)
    return repo


def copy_repo(source: Path, target: Path) -> Path:
    """A copy of a repo made by make_repo, at `target`: git, DVC's cache and the outputs, not
    DVC's temporary files (locks, the experiments queue)."""
    shutil.copytree(source, target, symlinks=True, ignore=shutil.ignore_patterns("tmp"))
    return target


@pytest.fixture(scope="session")
def trained_repo(tmp_path_factory) -> Path:
    """A repo with tiny params, the whole pipeline run and committed: built once per session,
    copied by the tests that change it (copy_repo)."""
    return make_repo(tmp_path_factory.mktemp("trained") / "repo")


# --- the browser ---------------------------------------------------------------------------


def chromium_or_skip() -> tuple[str, str]:
    """Paths of the browser and its driver; a skip (a failure under CI) when either is absent."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    missing = [name for name, path in (("chromium", browser), ("chromedriver", driver)) if not path]
    if missing:
        reason = f"{' and '.join(missing)} not found (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: CI must run the browser tests")
        pytest.skip(reason)
    return browser, driver


@contextlib.contextmanager
def headless_chromium(size: tuple[int, int], offline: bool = False) -> Iterator:
    """Headless Chromium through Selenium, the window `size` pixels wide and high. offline: no
    network but the machine itself (every host name fails to resolve, any proxy is a closed
    port): a page that fetches a script from the internet does not get it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = chromium_or_skip()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument(f"--window-size={size[0]},{size[1]}")
    if offline:
        options.add_argument("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
        options.add_argument("--proxy-server=http://127.0.0.1:9")
    # An explicit driver path: Selenium Manager never looks for (or downloads) one.
    chrome = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    try:
        yield chrome
    finally:
        chrome.quit()


# --- library objects ----------------------------------------------------------------------


def tiny_config(**overrides: object) -> ModelConfig:
    """A model of a few thousand weights over the byte vocabulary."""
    shape = {"context_len": 32, "n_layer": 2, "n_head": 2, "n_kv_head": 1, "n_embd": 32}
    return ModelConfig(**{"vocab_size": ByteTokenizer().vocab_size, **shape, **overrides})


def train_params(section: str = "pretrain", **overrides: object):
    """The repo's params.yaml section `section`, with `overrides`."""
    (params,) = load_params(REPO / "params.yaml", section)
    return dataclasses.replace(params, **overrides)


def tokenize(source: str | Path, tokenizer, out: Path, **text: object):
    """tokenize_text over `source` with params.yaml's text section and `text` overrides (one
    worker unless they say otherwise), its store beside `out`; the Tokenized report."""
    from xinslm.tokenize_text import tokenize_text

    params = train_params("text", **{"input": str(source), "workers": 1, **text})
    return tokenize_text(params, tokenizer, out, out.with_name(f"{out.name}-store"))


def token_ids(tokens_dir: Path, split: str) -> list[int]:
    """One split's token stream of a token artifact, as a list."""
    from xinslm.artifact import read_meta
    from xinslm.blocks import TokenStream

    stream = TokenStream(tokens_dir, read_meta(tokens_dir, "tokens"), split)
    return stream.read(0, len(stream)).tolist()


def train_on(model, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float) -> float:
    """Train `model` on one batch for `steps` steps at a constant lr (AdamW, no clipping or
    weight decay) through TrainStep, the training loop's own step; return the last loss."""
    params = train_params(
        optimizer="adamw", lr=lr, max_steps=steps, warmup_steps=0, min_lr_frac=1.0,
        weight_decay=0.0, grad_clip=0.0, compile=False, device="cpu",
    )  # fmt: skip
    step = TrainStep(model, params, torch.device("cpu"))
    for i in range(steps):
        loss, _ = step([(x, y)], i)
    return float(loss)


def render_chat_files(
    train: Path,
    val: Path,
    tokenizer,
    out: Path,
    context_len: int,
    on_error: str = "fail",
    overlong: str = "truncate",
    tool_calls: bool = True,
    decontaminate: tuple[str, ...] = (),
    utf8_errors: str = "strict",
) -> dict:
    """render_chat over two JSONL files, with the chat section's settings as arguments."""
    chat = ChatParams(
        input=str(train),
        val_input=str(val),
        on_error=on_error,
        utf8_errors=utf8_errors,
        overlong=overlong,
        tool_calls=tool_calls,
        decontaminate=list(decontaminate),
    )
    return render_chat(chat, tokenizer, out, context_len)


def conversation_example(conversation: list[dict], tokenizer) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one conversation, as sft trains on it."""
    ids, learned = render_conversation(conversation, tokenizer)
    return ids, shifted_labels(torch.tensor(ids), torch.tensor(learned)).tolist()


# --- tokenizers ---------------------------------------------------------------------------


@functools.cache
def _load(name, encodings_dir):
    return get_tokenizer(name, encodings_dir)


def tiktoken_tokenizer(name):
    """The tiktoken tokenizer `name` built from the shared files; skips the test when absent."""
    directory = shared_data() / "tiktoken"
    path = directory / TIKTOKEN_ENCODINGS[name][0]
    if not path.is_file():
        pytest.skip(f"{path} is missing: set XINSLM_SHARED_DATA to the folder holding tiktoken/")
    return _load(name, str(directory))


@pytest.fixture(scope="session")
def encodings_dir():
    directory = shared_data() / "tiktoken"
    if not (directory / "r50k_base.tiktoken").is_file():
        pytest.skip(f"{directory}/r50k_base.tiktoken is missing: set XINSLM_SHARED_DATA")
    return directory


@pytest.fixture
def gpt2(encodings_dir):
    return _load("gpt2", str(encodings_dir))


@pytest.fixture
def cl100k():
    return tiktoken_tokenizer("cl100k_base")


@pytest.fixture(params=["gpt2", "cl100k_base"])
def tiktoken_tok(request):
    """Each tiktoken encoding the tests use, in turn (skipped when its file is absent)."""
    return tiktoken_tokenizer(request.param)


@pytest.fixture(params=["byte", "gpt2", "cl100k_base"])
def any_tokenizer(request):
    """Each tokenizer kind in turn: bytes, and two tiktoken encodings (skipped when absent)."""
    if request.param == "byte":
        return ByteTokenizer()
    return tiktoken_tokenizer(request.param)


def dot_entries(directory):
    """Names in `directory` that start with '.': leftovers of an atomic write."""
    return sorted(p.name for p in Path(directory).iterdir() if p.name.startswith("."))


# --- the server -----------------------------------------------------------------------------


def save_random_chat_checkpoint(path: str | Path, seed: int = 3, context_len: int = 256) -> Path:
    """A checkpoint of a random-weights model over the byte vocabulary whose output depends on
    its context (test_generate.context_model): varied bytes, some of them invalid UTF-8, and
    with seed 3 a reply that sometimes ends with <|end|>. Nothing is trained: it is instant."""
    from test_generate import context_model

    return save_model_checkpoint(path, context_model(seed=seed, context_len=context_len))


def save_model_checkpoint(path: str | Path, model, step: int = 0) -> Path:
    """A chat checkpoint of `model` with the byte tokenizer, as the server and CLI load one."""
    save_checkpoint(
        path,
        model=model.state_dict(),
        model_config=model.config.to_dict(),
        tokenizer=ByteTokenizer().identity(),
        step=step,
    )
    return Path(path)


@pytest.fixture(scope="session")
def chat_checkpoint(tmp_path_factory) -> Path:
    """save_random_chat_checkpoint as .../chat.pt (so the server's model id is "chat")."""
    return save_random_chat_checkpoint(tmp_path_factory.mktemp("serve") / "chat.pt")


@contextlib.contextmanager
def live_server(checkpoint: str | Path, **settings: object) -> Iterator[str]:
    """`xinslm serve` in this process (serve.serving), on the CPU unless `settings` say
    otherwise, on a free localhost port. Yields the base URL ("http://127.0.0.1:PORT")."""
    from xinslm.serve import ServeSettings, serving

    with serving(ServeSettings(str(checkpoint), **{"device": "cpu", **settings})) as url:
        yield url
