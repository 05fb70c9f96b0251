"""params.yaml: every section loads as its dataclass, every key is required and checked, and
errors name the file and the dotted key."""

import dataclasses
import re
import typing

import pytest
import yaml
from conftest import REPO

from xinslm.config import (
    SECTIONS,
    ChatParams,
    ModelParams,
    PretrainParams,
    SftParams,
    TextParams,
    TokenizerName,
    TokenizerParams,
    load_params,
)
from xinslm.errors import XinslmError
from xinslm.model import ModelConfig
from xinslm.tokenizer import TIKTOKEN_ENCODINGS

REPO_PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
PRETRAIN_KEYS = (
    "batch_size, beta1, beta2, checkpoint_every, compile, device, eval_batches, eval_every, "
    "fp8, grad_accum, grad_clip, log_every, lr, max_steps, min_lr_frac, muon_lr, muon_momentum, "
    "nproc, optimizer, seed, shift_blocks, tokens_per_param, warmup_steps, weight_decay"
)


def write_params(tmp_path, **changes):
    """The repo's params.yaml with `changes` ({section: {key: value}}; None deletes a key)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in changes.items():
        for key, value in values.items():
            if value is None:
                del params[section][key]
            else:
                params[section][key] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_sections_load_as_dataclasses(tmp_path):
    path = write_params(tmp_path, pretrain={"lr": 1, "max_steps": 7, "compile": True})
    model, pretrain = load_params(path, "model", "pretrain")
    assert model == ModelParams(**REPO_PARAMS["model"])
    expected = {**REPO_PARAMS["pretrain"], "lr": 1.0, "max_steps": 7, "compile": True}
    assert pretrain == PretrainParams(**expected)
    assert type(pretrain.lr) is float


def test_the_dataclasses_have_no_defaults():
    for cls in SECTIONS.values():
        for f in dataclasses.fields(cls):
            assert f.default is dataclasses.MISSING, f"{cls.__name__}.{f.name}"
            assert f.default_factory is dataclasses.MISSING, f"{cls.__name__}.{f.name}"


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_a_missing_key_is_an_error_naming_it(tmp_path, section):
    key = sorted(REPO_PARAMS[section])[0]
    path = write_params(tmp_path, **{section: {key: None}})
    with pytest.raises(XinslmError) as e:
        load_params(path, section)
    assert str(e.value) == (
        f"{path}: missing key '{section}.{key}': params.yaml holds every value in effect, so "
        "each key must be set (the README's parameter tables list them)"
    )


def test_the_repo_params_set_every_key_and_no_other():
    for name, cls in SECTIONS.items():
        assert set(REPO_PARAMS[name]) == {f.name for f in dataclasses.fields(cls)}, name


def test_the_model_config_takes_every_model_param():
    params = ModelParams(**REPO_PARAMS["model"])
    assert params.depth == 0  # the repo's model is sized by its explicit keys
    config = ModelConfig.from_params(params, vocab_size=300)
    expected = {k: v for k, v in dataclasses.asdict(params).items() if k != "depth"}
    assert config.to_dict() == {**expected, "vocab_size": 300, "rope_base": 1e4}


# depth -> (n_layer, n_embd, n_head = n_kv_head): 64 wide per layer, rounded up to heads of 128
# (nanochat's build_model_meta), so depths 3 and 4 are both 256 wide.
DEPTHS = {1: (1, 128, 1), 2: (2, 128, 1), 3: (3, 256, 2), 4: (4, 256, 2), 6: (6, 384, 3)}
DEPTHS |= {12: (12, 768, 6), 20: (20, 1280, 10), 26: (26, 1664, 13)}


@pytest.mark.parametrize("depth", sorted(DEPTHS))
def test_depth_sets_layers_width_and_heads_of_128_and_wins_over_the_explicit_keys(depth):
    params = ModelParams(**{**REPO_PARAMS["model"], "depth": depth, "dropout": 0.1})
    config = ModelConfig.from_params(params, vocab_size=300)
    n_layer, n_embd, n_head = DEPTHS[depth]
    assert config.to_dict() == {
        "context_len": REPO_PARAMS["model"]["context_len"],
        "n_layer": n_layer,
        "n_head": n_head,
        "n_kv_head": n_head,
        "n_embd": n_embd,
        "logit_softcap": REPO_PARAMS["model"]["logit_softcap"],
        "dropout": 0.1,
        "vocab_size": 300,
        "rope_base": 1e4,
    }


def test_tokenizer_names_are_byte_bpe_and_the_tiktoken_encodings():
    assert typing.get_args(TokenizerName) == ("byte", "bpe", *TIKTOKEN_ENCODINGS)


TASK = {"name": "t", "kind": "answer", "path": "t.jsonl", "limit": 0, "samples": 1}
BAD_PARAMS = [
    ({"pretrain": {"lrr": 0.1}}, f"unknown key 'pretrain.lrr' (known keys: {PRETRAIN_KEYS})"),
    ({"pretrain": {"compile": "yes"}}, "pretrain.compile: 'yes' is not one of auto, true, false"),
    ({"pretrain": {"max_steps": True}}, "pretrain.max_steps: expected int, got bool True"),
    ({"pretrain": {"lr": "0.5e-3x"}}, "pretrain.lr: expected float, got str '0.5e-3x'"),
    ({"pretrain": {"lr": -0.1}}, "pretrain.lr: must be > 0, got -0.1"),
    ({"pretrain": {"lr": float("nan")}}, "pretrain.lr: must be > 0, got nan"),
    ({"model": {"n_embd": 64, "n_head": 3}}, "model.n_head: 3 does not divide n_embd 64"),
    (
        {"model": {"n_embd": 64, "n_head": 4, "n_kv_head": 3}},
        "model.n_kv_head: 3 does not divide n_head 4",
    ),
    ({"model": {"n_embd": 36, "n_head": 4}}, "model.n_embd / n_head must be even"),
    ({"model": {"depth": -1}}, "model.depth: must be >= 0 (0: n_layer, n_head, ... apply), got -1"),
    ({"model": {"depth": 2.5}}, "model.depth: expected int, got float 2.5"),
    (
        {"pretrain": {"max_steps": -1}},
        "pretrain.max_steps: must be > 0, or 0 to derive it from tokens_per_param, got -1",
    ),
    (
        {"pretrain": {"max_steps": 0, "tokens_per_param": 0}},
        "pretrain.max_steps: 0 derives the steps from tokens_per_param, which is 0",
    ),
    ({"pretrain": {"tokens_per_param": -2}}, "pretrain.tokens_per_param: must be >= 0, got -2"),
    ({"sft": {"max_steps": 0}}, "sft.max_steps: must be > 0, got 0"),  # sft derives nothing
    ({"sft": {"text_rows": -1}}, "sft.text_rows: must be >= 0 (0: chats only), got -1"),
    ({"chat": {"on_error": "maybe"}}, "chat.on_error: 'maybe' is not one of fail, skip"),
    ({"text": {"val_fraction": 0.6}}, "text.val_fraction: must be between 0.0 and 0.5, got 0.6"),
    ({"tokenizer": {"name": "gpt5"}}, "tokenizer.name: 'gpt5' is not one of byte, bpe, gpt2,"),
    ({"chat": {"decontaminate": "x.jsonl"}}, "chat.decontaminate: expected a list of strings"),
    # eval.tasks: a list of mappings, each checked like a section, the item named by index.
    ({"eval": {"tasks": [{**TASK, "kind": "mcq"}]}}, "eval.tasks[0].kind: 'mcq' is not one of"),
    ({"eval": {"tasks": [TASK, {**TASK, "lim": 1}]}}, "unknown key 'eval.tasks[1].lim'"),
    ({"eval": {"tasks": [{"name": "t"}]}}, "missing key 'eval.tasks[0].kind'"),
    ({"eval": {"tasks": [{**TASK, "limit": -1}]}}, "eval.tasks[0].limit: must be >= 0"),
    ({"eval": {"tasks": [{**TASK, "name": "a/b"}]}}, "eval.tasks[0].name: 'a/b' must be"),
    ({"eval": {"tasks": [{**TASK, "samples": 0}]}}, "eval.tasks[0].samples: must be > 0"),
    ({"eval": {"tasks": [TASK, TASK]}}, "eval.tasks: two tasks are named 't'"),
    ({"eval": {"tasks": {"t": TASK}}}, "eval.tasks: expected a list of mappings"),
    ({"eval": {"tasks": ["t"]}}, "'eval.tasks[0]' must be a mapping of keys to values"),
    # eval's sampling settings: the one check every Sampling runs (test_sampling), named here
    # by key; only that check bounds the seed.
    ({"eval": {"temperature": -1}}, "eval.temperature: must be a number from 0 to 2 (0: greedy)"),
    ({"eval": {"top_p": 7}}, "eval.top_p: must be a number above 0 and at most 1, got 7"),
    ({"eval": {"max_new_tokens": 0}}, "eval.max_new_tokens: must be an integer >= 1, got 0"),
    ({"eval": {"seed": 2**64}}, "eval.seed: must be an integer from -2**63 to 2**63-1, got 1844"),
]


@pytest.mark.parametrize("changes, problem", BAD_PARAMS)
def test_bad_value_names_the_dotted_key(tmp_path, changes, problem):
    path = write_params(tmp_path, **changes)
    with pytest.raises(XinslmError, match=re.escape(f"{path}: {problem}")):
        load_params(path, *changes)


def test_pretrain_max_steps_0_loads_for_the_stage_to_derive(tmp_path):
    path = write_params(tmp_path, pretrain={"max_steps": 0, "tokens_per_param": 2.5})
    (pretrain,) = load_params(path, "pretrain")
    assert (pretrain.max_steps, pretrain.tokens_per_param) == (0, 2.5)


def test_missing_section(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"model": REPO_PARAMS["model"]}))
    with pytest.raises(XinslmError, match=re.escape(f"{path}: missing section 'sft'")):
        load_params(path, "model", "sft")


def test_section_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("model: 5\n")
    with pytest.raises(XinslmError, match=re.escape(f"{path}: section 'model' must be a mapping")):
        load_params(path, "model")


def test_file_not_found(tmp_path):
    path = tmp_path / "absent.yaml"
    with pytest.raises(XinslmError, match=re.escape(f"{path}: file not found")):
        load_params(path, "model")


def test_invalid_yaml_is_one_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("model:\n  n_head: [1, 2\n")
    with pytest.raises(XinslmError, match=re.escape(f"{path}: not valid YAML: ")) as e:
        load_params(path, "model")
    assert "\n" not in str(e.value)


def test_repo_params_load():
    sections = ("tokenizer", "text", "model", "chat", "pretrain", "sft")
    loaded = load_params(REPO / "params.yaml", *sections)
    kinds = (TokenizerParams, TextParams, ModelParams, ChatParams, PretrainParams, SftParams)
    assert [type(p) for p in loaded] == list(kinds)


def test_the_default_optimizer_is_the_one_the_readme_names():
    """README's Defaults section names the recipe a user gets; params.yaml must ship it, so an
    edit of one without the other fails here."""
    pretrain, sft = load_params(REPO / "params.yaml", "pretrain", "sft")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    named = re.findall(r"Both stages train with `optimizer: (\w+)` by default", readme)
    assert named == [pretrain.optimizer] == [sft.optimizer]
    recipe = re.search(r"`pretrain.muon_lr: ([\d.]+)`, `pretrain.lr: ([\d.]+)`", readme)
    assert recipe and (float(recipe[1]), float(recipe[2])) == (pretrain.muon_lr, pretrain.lr)
    assert f"`sft.text_rows: {sft.text_rows}`" in readme
