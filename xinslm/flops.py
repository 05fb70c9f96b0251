"""Training compute from the model's shape alone (no model is built): its scaling parameters,
FLOPs per token, and the steps that train on a given number of tokens per parameter.

Counted as nanochat (gpt.py estimate_flops) and PaLM count: 6 FLOPs per token for each weight
a token is multiplied by (2 forward, 4 backward), that is every matrix and the head but not
the input embedding (a lookup), plus 12 * n_layer * n_embd * context_len for attention's
score and value matmuls, forward and backward, at full context. Norms, softmax and the
activation are left out (about 1% by Chinchilla's count).
"""

from __future__ import annotations

import math

from xinslm.model import ModelConfig


def scaling_params(config: ModelConfig) -> int:
    """The weights a token is multiplied by: the blocks' matrices and the head, every
    parameter but the input embedding. nanochat's scaling parameters (transformer matrices
    + lm_head: "the cleanest scaling laws"), and the 6N of the FLOPs."""
    d, head_dim = config.n_embd, config.n_embd // config.n_head
    attention = 2 * d * d + 2 * d * config.n_kv_head * head_dim  # q and out, k and v
    mlp = 2 * d * 4 * d
    return config.n_layer * (attention + mlp) + d * config.vocab_size


def flops_per_token(config: ModelConfig) -> float:
    """Training FLOPs (forward and backward) per token at full context."""
    attention = 12 * config.n_layer * config.n_embd * config.context_len
    return float(6 * scaling_params(config) + attention)


def horizon_steps(config: ModelConfig, tokens_per_param: float, tokens_per_step: int) -> int:
    """Optimizer steps to train on tokens_per_param tokens per scaling parameter (nanochat's
    --target-param-data-ratio), rounded up to whole steps."""
    return math.ceil(tokens_per_param * scaling_params(config) / tokens_per_step)
