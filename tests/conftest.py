"""Shared helpers: where the real data lives, and tiktoken tokenizers that skip when absent."""

import functools
import os
from pathlib import Path

import pytest
import torch
from hypothesis import settings

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
