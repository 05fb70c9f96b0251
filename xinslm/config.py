"""Typed params: each params.yaml section is a dataclass, checked once when it is loaded.

A stage script asks for the sections it reads (`load_params("params.yaml", "pretrain")`) and
gets dataclasses back, so no script digs through raw dicts and every error names its key.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from xinslm.errors import XinslmError


@dataclass
class TokenizerParams:
    name: str = "byte"
    encodings_dir: str = "../shared/data/tiktoken"
    vocab_size: int = 4096
    max_chars: int = 100_000_000

    def check(self) -> None:
        from xinslm.tokenizer import TIKTOKEN_ENCODINGS

        known = ["byte", "bpe", *TIKTOKEN_ENCODINGS]
        if self.name not in known:
            raise ValueError(f"name: '{self.name}' is not one of {', '.join(known)}")
        if self.vocab_size <= 256:
            raise ValueError(f"vocab_size: must be > 256 (the bytes), got {self.vocab_size}")
        _positive("max_chars", self.max_chars)


@dataclass
class TextParams:
    input: str = "data/example_data_text.txt"
    val_fraction: float = 0.1
    chunk_bytes: int = 4 * 1024 * 1024
    utf8_errors: Literal["strict", "replace"] = "strict"

    def check(self) -> None:
        _in_range("val_fraction", self.val_fraction, 0.0, 0.5)
        _positive("chunk_bytes", self.chunk_bytes)


@dataclass
class ModelParams:
    context_len: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int = 2
    n_embd: int = 128
    logit_softcap: float = 15.0
    dropout: float = 0.0

    def check(self) -> None:
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
    input: str = "data/example_data_chat.jsonl"
    val_input: str = "data/example_data_chat_val.jsonl"
    on_error: Literal["fail", "skip"] = "fail"
    overlong: Literal["truncate", "drop"] = "truncate"


@dataclass
class TrainParams:
    """The knobs of one training stage (the pretrain and sft sections share this shape)."""

    max_steps: int = 300
    batch_size: int = 16
    grad_accum: int = 1
    optimizer: Literal["adamw", "muon"] = "adamw"
    lr: float = 3e-3
    muon_lr: float = 0.02
    muon_momentum: float = 0.95
    min_lr_frac: float = 0.1
    warmup_steps: int = 30
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    log_every: int = 10
    eval_every: int = 50
    eval_batches: int = 8
    checkpoint_every: int = 100
    seed: int = 1337
    device: str = "auto"
    compile: Literal["auto", True, False] = "auto"
    nproc: int = 1

    def check(self) -> None:
        for key in (
            "max_steps",
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


@dataclass
class PretrainParams(TrainParams):
    """The pretrain section: TrainParams plus how the packed blocks are read."""

    shift_blocks: bool = True


def _check_device(device: str) -> None:
    if device not in ("auto", "cpu", "mps") and not device.startswith("cuda"):
        raise ValueError(f"device: '{device}' is not auto, cpu, mps or cuda[:N]")


@dataclass
class EvalParams:
    batch_size: int = 16
    prompts: list[str] = field(default_factory=lambda: ["What is 2 plus 3?"])
    base_prompts: list[str] = field(default_factory=lambda: ["The river"])
    max_new_tokens: int = 64
    temperature: float = 0.8
    top_k: int = 50
    top_p: float = 0.95
    seed: int = 0
    device: str = "auto"

    def check(self) -> None:
        _positive("batch_size", self.batch_size)
        _positive("max_new_tokens", self.max_new_tokens)
        _positive("top_k", self.top_k)
        if not 0 <= self.temperature < math.inf:
            raise ValueError(f"temperature: must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p}")
        _check_device(self.device)


SECTIONS: dict[str, type] = {
    "tokenizer": TokenizerParams,
    "text": TextParams,
    "model": ModelParams,
    "chat": ChatParams,
    "pretrain": PretrainParams,
    "sft": TrainParams,
    "eval": EvalParams,
}


def _positive(key: str, value: float) -> None:
    if not (0 < value < math.inf):  # also refuses NaN and infinity
        raise ValueError(f"{key}: must be > 0, got {value}")


def _in_range(key: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:  # False for NaN too
        raise ValueError(f"{key}: must be between {lo} and {hi}, got {value}")


def _check_type(key: str, value: object, hint: object) -> object:
    """Return `value` if it fits the field's type (an int is accepted as a float)."""
    if typing.get_origin(hint) is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{key}: expected a list of strings, got {value!r}")
        return value
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


def parse_section(name: str, raw: object, source: str = "params.yaml"):
    """Build the dataclass of section `name` from its raw mapping; errors name file and key."""
    cls = SECTIONS[name]
    if not isinstance(raw, dict):
        raise XinslmError(f"{source}: section '{name}' must be a mapping of keys to values")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise XinslmError(
            f"{source}: unknown key '{name}.{unknown[0]}' (known keys: {', '.join(sorted(fields))})"
        )
    try:
        values = {k: _check_type(k, v, hints[k]) for k, v in raw.items()}
        params = cls(**values)
        if hasattr(params, "check"):
            params.check()
    except ValueError as e:
        raise XinslmError(f"{source}: {name}.{e}") from None
    return params


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
