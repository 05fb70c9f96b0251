"""Typed params: each params.yaml section is a dataclass, checked once when it is loaded.

A stage script asks for the sections it reads (`load_params("params.yaml", "pretrain")`) and
gets dataclasses back, so no script digs through raw dicts and every error names its key.
params.yaml is the one source of every value: the dataclasses have no defaults, and a key
missing from the file is an error naming it, so the values in effect are those DVC records.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from xinslm.errors import XinslmError

# byte, a BPE trained by train-tokenizer, or a tiktoken encoding (xinslm.tokenizer has their
# files; a test checks the two lists agree).
TokenizerName = Literal[
    "byte", "bpe", "gpt2", "r50k_base", "p50k_base", "cl100k_base", "o200k_base"
]


@dataclass
class TokenizerParams:
    name: TokenizerName
    encodings_dir: str
    vocab_size: int
    max_chars: int

    def check(self) -> None:
        if self.vocab_size <= 256:
            raise ValueError(f"vocab_size: must be > 256 (the bytes), got {self.vocab_size}")
        _positive("max_chars", self.max_chars)


@dataclass
class TextParams:
    input: str  # a text file, or a folder of .txt, .jsonl and .parquet shards
    val_fraction: float
    chunk_bytes: int
    utf8_errors: Literal["strict", "replace"]
    field: str  # the text of a .jsonl or .parquet record
    workers: int  # processes tokenizing shards (0: one per CPU)

    def check(self) -> None:
        _in_range("val_fraction", self.val_fraction, 0.0, 0.5)
        _positive("chunk_bytes", self.chunk_bytes)
        if not self.field:
            raise ValueError("field: must name the records' text field, got ''")
        if self.workers < 0:
            raise ValueError(f"workers: must be >= 0 (0: one per CPU), got {self.workers}")


# model.depth's shape, as nanochat's base_train.py (build_model_meta): 64 channels of width
# per layer, rounded up to whole heads of 128 channels.
ASPECT_RATIO, HEAD_DIM = 64, 128


@dataclass
class ModelParams:
    context_len: int
    depth: int  # > 0: sets n_layer, n_head, n_kv_head and n_embd (see shape); 0: they are used
    n_layer: int
    n_head: int
    n_kv_head: int
    n_embd: int
    logit_softcap: float
    dropout: float

    def shape(self) -> dict:
        """The network's keys (every field but depth), with depth applied: depth layers,
        64 * depth channels rounded up to a multiple of 128, one head (and kv head) per 128.
        The one place depth is resolved: pretrain builds its model from this, and every
        later stage from the checkpoint's config, which holds the result."""
        shape = {k: v for k, v in dataclasses.asdict(self).items() if k != "depth"}
        if self.depth > 0:
            width = -(-self.depth * ASPECT_RATIO // HEAD_DIM) * HEAD_DIM
            heads = width // HEAD_DIM
            shape.update(n_layer=self.depth, n_embd=width, n_head=heads, n_kv_head=heads)
        return shape

    def check(self) -> None:
        if self.depth < 0:
            raise ValueError(
                f"depth: must be >= 0 (0: n_layer, n_head, ... apply), got {self.depth}"
            )
        # Checked also with depth set (which ignores them): a bad value is a mistake either way.
        for key in ("context_len", "n_layer", "n_head", "n_kv_head", "n_embd"):
            _positive(key, getattr(self, key))
        if self.n_embd % self.n_head:
            raise ValueError(f"n_head: {self.n_head} does not divide n_embd {self.n_embd}")
        if (self.n_embd // self.n_head) % 2:
            raise ValueError("n_embd / n_head must be even (RoPE rotates pairs of channels)")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_kv_head: {self.n_kv_head} does not divide n_head {self.n_head}")
        _positive("logit_softcap", self.logit_softcap)
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout: must be at least 0 and below 1, got {self.dropout}")


@dataclass
class ChatParams:
    input: str
    val_input: str
    on_error: Literal["fail", "skip"]
    utf8_errors: Literal["strict", "replace"]
    overlong: Literal["truncate", "drop"]
    tool_calls: bool
    decontaminate: list[str]


@dataclass
class TrainParams:
    """The knobs of one training stage (the pretrain and sft sections share this shape)."""

    max_steps: int
    batch_size: int
    grad_accum: int
    optimizer: Literal["adamw", "muon"]
    lr: float
    muon_lr: float
    muon_momentum: float
    min_lr_frac: float
    warmup_steps: int
    weight_decay: float
    beta1: float
    beta2: float
    grad_clip: float
    log_every: int
    eval_every: int
    eval_batches: int
    checkpoint_every: int
    seed: int
    device: str
    compile: Literal["auto", True, False]
    nproc: int
    fp8: bool

    def check(self) -> None:
        self.check_max_steps()
        for key in (
            "batch_size",
            "grad_accum",
            "nproc",
            "log_every",
            "eval_every",
            "eval_batches",
        ):
            _positive(key, getattr(self, key))
        _positive("lr", self.lr)
        _positive("muon_lr", self.muon_lr)
        _in_range("muon_momentum", self.muon_momentum, 0.0, 1.0)
        if not 0 <= self.checkpoint_every < math.inf:
            raise ValueError(
                f"checkpoint_every: must be >= 0 (0: never), got {self.checkpoint_every}"
            )
        _in_range("min_lr_frac", self.min_lr_frac, 0.0, 1.0)
        _in_range("beta1", self.beta1, 0.0, 1.0)
        _in_range("beta2", self.beta2, 0.0, 1.0)
        if not all(
            0 <= v < math.inf for v in (self.warmup_steps, self.weight_decay, self.grad_clip)
        ):
            raise ValueError("warmup_steps, weight_decay and grad_clip must be >= 0")
        _check_device(self.device)

    def check_max_steps(self) -> None:
        _positive("max_steps", self.max_steps)


@dataclass
class PretrainParams(TrainParams):
    """The pretrain section: TrainParams plus how the packed blocks are read, and the
    horizon from the model's size when max_steps is 0."""

    shift_blocks: bool
    tokens_per_param: float  # max_steps 0: train on this many tokens per scaling parameter

    def check_max_steps(self) -> None:
        if not 0 <= self.tokens_per_param < math.inf:
            raise ValueError(f"tokens_per_param: must be >= 0, got {self.tokens_per_param}")
        if self.max_steps < 0:
            raise ValueError(
                f"max_steps: must be > 0, or 0 to derive it from tokens_per_param, "
                f"got {self.max_steps}"
            )
        if self.max_steps == 0 and self.tokens_per_param == 0:
            raise ValueError("max_steps: 0 derives the steps from tokens_per_param, which is 0")


def _check_device(device: str) -> None:
    if device not in ("auto", "cpu", "mps") and not device.startswith("cuda"):
        raise ValueError(f"device: '{device}' is not auto, cpu, mps or cuda[:N]")


@dataclass
class SftParams(TrainParams):
    """The sft section: TrainParams plus the pretraining text mixed into each batch."""

    text_rows: int  # pretraining windows appended to each micro-batch (0: chats only)

    def check(self) -> None:
        super().check()
        if not 0 <= self.text_rows < math.inf:
            raise ValueError(f"text_rows: must be >= 0 (0: chats only), got {self.text_rows}")


@dataclass
class TaskParams:
    """One task of eval.tasks: its name (the file names of its results), kind, file, how
    many of its items to use (0: all) and, for an answer task, samples per item (pass@k)."""

    name: str
    kind: Literal["answer", "choice"]
    path: str
    limit: int
    samples: int

    def check(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name) or self.name.startswith("."):
            raise ValueError(f"name: {self.name!r} must be letters, digits, '_', '-' or '.'")
        if self.limit < 0:
            raise ValueError(f"limit: must be >= 0 (0: every item), got {self.limit}")
        _positive("samples", self.samples)
        if self.kind == "choice" and self.samples != 1:
            raise ValueError("samples: a choice task scores each item once; set samples: 1")


@dataclass
class EvalParams:
    batch_size: int
    prompts: list[str]
    base_prompts: list[str]
    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    seed: int
    device: str
    tasks: list[TaskParams]
    tool: bool

    def check(self) -> None:
        names = [t.name for t in self.tasks]
        if len(set(names)) < len(names):
            twice = next(n for n in names if names.count(n) > 1)
            raise ValueError(f"tasks: two tasks are named '{twice}'")
        _positive("batch_size", self.batch_size)
        check_sampling(self.max_new_tokens, self.temperature, self.top_k, self.top_p, self.seed)
        _check_device(self.device)


class SamplingError(XinslmError, ValueError):
    """A sampling setting out of bounds: `setting` names it, `problem` says what it must be.
    Each caller names the setting its own way (`--top-p`, `eval.top_p`, the API's `top_p`)."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting, self.problem = setting, problem


def check_sampling(
    max_new_tokens: object, temperature: object, top_k: object, top_p: object, seed: object
) -> None:
    """The one check of sampling settings: `Sampling` (sampling.py: the CLI, the server, the
    engine) and `eval` here both call it. It lives here so that reading params.yaml needs
    neither torch nor sampling.py. Raises SamplingError for the first setting out of bounds."""

    def integer(x: object) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    def number(x: object) -> bool:
        return isinstance(x, int | float) and not isinstance(x, bool)

    n, t, k, p, s = max_new_tokens, temperature, top_k, top_p, seed
    rules = [  # (setting, value, within bounds, the bounds); NaN fails every comparison
        ("max_new_tokens", n, integer(n) and n >= 1, "an integer >= 1"),
        ("temperature", t, number(t) and 0 <= t <= 2, "a number from 0 to 2 (0: greedy)"),
        ("top_k", k, k is None or integer(k) and k >= 1, "an integer >= 1"),
        ("top_p", p, p is None or number(p) and 0 < p <= 1, "a number above 0 and at most 1"),
        ("seed", s, integer(s) and -(2**63) <= s < 2**63, "an integer from -2**63 to 2**63-1"),
    ]
    for name, value, ok, bounds in rules:
        if not ok:
            raise SamplingError(name, f"must be {bounds}, got {value!r}")


SECTIONS: dict[str, type] = {
    "tokenizer": TokenizerParams,
    "text": TextParams,
    "model": ModelParams,
    "chat": ChatParams,
    "pretrain": PretrainParams,
    "sft": SftParams,
    "eval": EvalParams,
}


def _positive(key: str, value: float) -> None:
    if not (0 < value < math.inf):  # also refuses NaN and infinity
        raise ValueError(f"{key}: must be > 0, got {value}")


def _in_range(key: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:  # False for NaN too
        raise ValueError(f"{key}: must be between {lo} and {hi}, got {value}")


def _check_type(key: str, value: object, hint: object, where: str = "") -> object:
    """Return `value` if it fits the field's type (an int is accepted as a float); a list of
    dataclasses is built from a list of mappings, each checked like a section."""
    if typing.get_origin(hint) is list:
        return _check_list(key, value, typing.get_args(hint)[0], where)
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        if not any(value == c and type(value) is type(c) for c in choices):
            shown = ", ".join(str(c).lower() if isinstance(c, bool) else c for c in choices)
            raise ValueError(f"{key}: '{value}' is not one of {shown}")
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (hint is int and isinstance(value, bool)) or not isinstance(value, hint):  # type: ignore[arg-type]
        name = getattr(hint, "__name__", str(hint))
        raise ValueError(f"{key}: expected {name}, got {type(value).__name__} {value!r}")
    return value


def _check_list(key: str, value: object, item: type, where: str) -> list:
    """A list of strings, or of dataclasses built from mappings (each checked like a section)."""
    if dataclasses.is_dataclass(item):
        if not isinstance(value, list):
            raise ValueError(f"{key}: expected a list of mappings, got {value!r}")
        return [_build(item, v, f"{where}.{key}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{key}: expected a list of strings, got {value!r}")
    return value


class _Named(ValueError):
    """A problem whose message already names the full key (`eval.tasks[0].limit: ...`)."""


def _build(cls: type, raw: object, name: str):
    """The dataclass `cls` from a raw mapping, every key present, known, typed and checked;
    ValueError names the key (under `name`)."""
    if not isinstance(raw, dict):
        raise _Named(f"'{name}' must be a mapping of keys to values")
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise _Named(f"unknown key '{name}.{unknown[0]}' (known keys: {known})")
    missing = [f for f in fields if f not in raw]
    if missing:
        raise _Named(
            f"missing key '{name}.{missing[0]}': params.yaml holds every value in "
            "effect, so each key must be set (the README's parameter tables list them)"
        )
    try:
        params = cls(**{k: _check_type(k, v, hints[k], name) for k, v in raw.items()})
        if hasattr(params, "check"):
            params.check()
    except _Named:
        raise
    except ValueError as e:
        raise _Named(f"{name}.{e}") from None
    return params


def parse_section(name: str, raw: object, source: str = "params.yaml"):
    """Build the dataclass of section `name` from its raw mapping; errors name file and key."""
    if not isinstance(raw, dict):
        raise XinslmError(f"{source}: section '{name}' must be a mapping of keys to values")
    try:
        return _build(SECTIONS[name], raw, name)
    except ValueError as e:
        raise XinslmError(f"{source}: {e}") from None


def load_params(path: str | Path, *sections: str) -> tuple:
    """Load and check the named sections of params.yaml, in the order asked."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise XinslmError(f"{path}: file not found") from None
    except yaml.YAMLError as e:
        raise XinslmError(f"{path}: not valid YAML: {e}".replace("\n", " ")) from None
    if not isinstance(doc, dict):
        raise XinslmError(f"{path}: expected a mapping of sections")
    out = []
    for name in sections:
        if name not in doc:
            raise XinslmError(f"{path}: missing section '{name}'")
        out.append(parse_section(name, doc[name], str(path)))
    return tuple(out)
