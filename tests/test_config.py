import re

import pytest
from conftest import REPO

from xinslm.config import (
    ChatParams,
    ModelParams,
    PretrainParams,
    TextParams,
    TokenizerParams,
    TrainParams,
    load_params,
)
from xinslm.errors import XinslmError

PRETRAIN_KEYS = (
    "batch_size, beta1, beta2, checkpoint_every, compile, device, eval_batches, eval_every, "
    "grad_accum, grad_clip, log_every, lr, max_steps, min_lr_frac, muon_lr, muon_momentum, "
    "nproc, optimizer, seed, shift_blocks, warmup_steps, weight_decay"
)


def write_params(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_sections_load_as_dataclasses(tmp_path):
    path = write_params(
        tmp_path,
        "model:\n  context_len: 64\n  n_embd: 32\n  n_head: 2\n  n_kv_head: 1\n"
        "pretrain:\n  lr: 1\n  max_steps: 7\n  compile: true\n",
    )
    model, pretrain = load_params(path, "model", "pretrain")
    assert model == ModelParams(context_len=64, n_embd=32, n_head=2, n_kv_head=1)
    assert pretrain == PretrainParams(lr=1.0, max_steps=7, compile=True)
    assert type(pretrain.lr) is float


BAD_PARAMS = [
    ("pretrain:\n  lrr: 0.1\n", f"unknown key 'pretrain.lrr' (known keys: {PRETRAIN_KEYS})"),
    ("pretrain:\n  compile: 'yes'\n", "pretrain.compile: 'yes' is not one of auto, true, false"),
    ("pretrain:\n  max_steps: true\n", "pretrain.max_steps: expected int, got bool True"),
    ("pretrain:\n  lr: 0.5e-3x\n", "pretrain.lr: expected float, got str '0.5e-3x'"),
    ("pretrain:\n  lr: -0.1\n", "pretrain.lr: must be > 0, got -0.1"),
    ("model:\n  n_embd: 64\n  n_head: 3\n", "model.n_head: 3 does not divide n_embd 64"),
    (
        "model:\n  n_embd: 64\n  n_head: 4\n  n_kv_head: 3\n",
        "model.n_kv_head: 3 does not divide n_head 4",
    ),
    ("model:\n  n_embd: 36\n  n_head: 4\n", "model.n_embd / n_head must be even"),
    ("chat:\n  on_error: maybe\n", "chat.on_error: 'maybe' is not one of fail, skip"),
    ("text:\n  val_fraction: 0.6\n", "text.val_fraction: must be between 0.0 and 0.5, got 0.6"),
    ("tokenizer:\n  name: gpt5\n", "tokenizer.name: 'gpt5' is not one of byte, bpe, gpt2"),
]


@pytest.mark.parametrize("text, problem", BAD_PARAMS)
def test_bad_value_names_the_dotted_key(tmp_path, text, problem):
    path = write_params(tmp_path, text)
    section = text.split(":")[0]
    with pytest.raises(XinslmError, match=re.escape(f"{path}: {problem}")):
        load_params(path, section)


def test_missing_section(tmp_path):
    path = write_params(tmp_path, "model: {}\n")
    with pytest.raises(XinslmError, match=re.escape(f"{path}: missing section 'sft'")):
        load_params(path, "model", "sft")


def test_section_that_is_not_a_mapping(tmp_path):
    path = write_params(tmp_path, "model: 5\n")
    with pytest.raises(XinslmError, match=re.escape(f"{path}: section 'model' must be a mapping")):
        load_params(path, "model")


def test_file_not_found(tmp_path):
    path = tmp_path / "absent.yaml"
    with pytest.raises(XinslmError, match=re.escape(f"{path}: file not found")):
        load_params(path, "model")


def test_invalid_yaml_is_one_line(tmp_path):
    path = write_params(tmp_path, "model:\n  n_head: [1, 2\n")
    with pytest.raises(XinslmError, match=re.escape(f"{path}: not valid YAML: ")) as e:
        load_params(path, "model")
    assert "\n" not in str(e.value)


def test_repo_params_load():
    sections = ("tokenizer", "text", "model", "chat", "pretrain", "sft")
    loaded = load_params(REPO / "params.yaml", *sections)
    kinds = (TokenizerParams, TextParams, ModelParams, ChatParams, PretrainParams, TrainParams)
    assert [type(p) for p in loaded] == list(kinds)


def test_nan_lr_is_refused(tmp_path):
    path = write_params(tmp_path, "pretrain:\n  lr: .nan\n")
    with pytest.raises(XinslmError, match=re.escape(f"{path}: pretrain.lr: must be > 0")):
        load_params(path, "pretrain")
