"""NanoChatModel: a decoder-only Transformer, small enough to read in one sitting.

Following nanochat's gpt.py (MIT) and nanoGPT's model.py (MIT):
- RMSNorm without learned scale, applied before each block and on q and k (QK-norm);
- rotary position embeddings (RoPE) instead of learned positions;
- grouped-query attention: n_kv_head key/value heads shared by n_head query heads;
- a ReLU^2 MLP, no biases anywhere, untied input embedding and output head;
- logits squashed by softcap * tanh(logits / softcap);
- optional dropout (as nanoGPT) on attention weights and on each block's two outputs; off by
  default, as in nanochat, and always off in eval mode and generation.
Attention runs through F.scaled_dot_product_attention, so GPUs get flash attention.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

if TYPE_CHECKING:
    from xinslm.config import ModelParams

IGNORE_INDEX = -100  # the label of a position with no learned target (the loss skips it)


@dataclass(kw_only=True)
class ModelConfig:
    """The network's shape: params.yaml's model section (`from_params`), plus the vocabulary
    size that comes with the data. Checkpoints store it (`to_dict`) and rebuild from it."""

    context_len: int
    n_layer: int
    n_head: int
    n_kv_head: int
    n_embd: int
    logit_softcap: float = 15.0
    dropout: float = 0.0
    vocab_size: int
    rope_base: float = 10000.0  # a fixed choice, not a param

    @classmethod
    def from_params(cls, params: ModelParams, vocab_size: int) -> ModelConfig:
        return cls(vocab_size=vocab_size, **params.shape())  # model.depth applied

    def to_dict(self) -> dict:
        return asdict(self)


def norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


def rotary_tables(
    context_len: int, head_dim: int, base: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape (context_len, head_dim) for positions 0..context_len-1: channel i
    and its partner i + d/2 (d = head_dim) share an angle; sin carries the sign of its half
    (+ in the first, - in the second), so rotating is x * cos + halves_swapped(x) * sin."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(context_len, dtype=torch.float32), inv_freq)
    return torch.cat([angles.cos()] * 2, dim=-1), torch.cat([angles.sin(), -angles.sin()], -1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (i, i + d/2) of x (B, T, H, D) by position-dependent angles;
    cos and sin are (B or 1, T, D), the tables at each row's positions. Four kernels in
    eager mode (a decode step is made of small kernels, so their number is its time)."""
    d = x.shape[-1] // 2
    swapped = torch.cat([x[..., d:], x[..., :d]], dim=-1)
    cos, sin = cos[:, :, None, :].to(x.dtype), sin[:, :, None, :].to(x.dtype)
    return x * cos + swapped * sin


class KVCache:
    """Keys and values of every layer for the tokens seen so far, so that generation feeds
    only the new token through the model: prefill the prompt once, then one token per step.
    Keys are stored after RoPE, at their absolute positions, with n_kv_head heads (GQA).
    Every row is at the same position; the inference engine (engine.py) has a cache whose
    rows each have their own. Both offer what the model asks of a cache: `positions`,
    `attend` and `advance`."""

    def __init__(self, config: ModelConfig, batch_size: int, device, dtype=torch.float32):
        head_dim = config.n_embd // config.n_head
        shape = (config.n_layer, batch_size, config.n_kv_head, config.context_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0  # tokens already in the cache

    @classmethod
    def over(cls, k: torch.Tensor, v: torch.Tensor) -> KVCache:
        """An empty cache that writes into k and v (L, B, H_kv, context_len, D), e.g. views
        of some rows of a larger cache."""
        cache = cls.__new__(cls)
        cache.k, cache.v, cache.pos = k, v, 0
        return cache

    def positions(self, T: int) -> torch.Tensor:
        """The positions (1, T) of T new tokens."""
        if self.pos + T > self.k.shape[3]:
            raise ValueError(
                f"sequence of {self.pos + T} tokens exceeds context_len {self.k.shape[3]}"
            )
        return torch.arange(self.pos, self.pos + T, device=self.k.device)[None]

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Store this layer's new k, v (B, H_kv, T, D) and attend the new queries q (B, H, T, D)
        to every cached key and to the new keys up to their own."""
        past, T = self.pos, k.shape[2]
        self.k[layer, :, :, past : past + T] = k
        self.v[layer, :, :, past : past + T] = v
        k, v = self.k[layer, :, :, : past + T], self.v[layer, :, :, : past + T]
        mask = None
        if past > 0 and T > 1:
            mask = torch.ones(T, past + T, dtype=torch.bool, device=q.device).tril(past)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=past == 0, enable_gqa=k.shape[1] != q.shape[1]
        )

    def advance(self, T: int) -> None:
        self.pos += T


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        self.layer = layer
        self.n_head, self.n_kv_head = config.n_head, config.n_kv_head
        self.head_dim = config.n_embd // config.n_head
        self.c_q = nn.Linear(config.n_embd, self.n_head * self.head_dim, bias=False)
        self.c_k = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_v = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.dropout = config.dropout
        self.qkv_weight: torch.Tensor | None = None  # fuse_qkv() sets it, for inference

    @torch.no_grad()
    def fuse_qkv(self) -> None:
        """Keep c_q, c_k and c_v also as one matrix, so that an inference pass does not
        concatenate them at every step (what a decode step's time depends on is its number
        of kernels). The fused copy serves only under torch.inference_mode (the engine's), so
        training, its eval passes and the reference generator never read a stale copy."""
        self.qkv_weight = torch.cat([self.c_q.weight, self.c_k.weight, self.c_v.weight])

    def _qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """q (B, T, H, D) and k (B, T, H_kv, D) turned by RoPE and normalized, and v. One
        matmul projects all three (their weights concatenated: 1.8% more tokens/s for d12 on
        an H100 than three matmuls), and q and k turn and normalize together. The weights stay
        three parameters, so Muon orthogonalizes each matrix on its own."""
        B, T, _ = x.shape
        H, H_kv, D = self.n_head, self.n_kv_head, self.head_dim
        w = self.qkv_weight
        if w is None or not torch.is_inference_mode_enabled():
            w = torch.cat([self.c_q.weight, self.c_k.weight, self.c_v.weight])
        qkv = F.linear(x, w).view(B, T, H + 2 * H_kv, D)
        qk = norm(apply_rotary(qkv[:, :, : H + H_kv], cos, sin))
        return qk[:, :, :H], qk[:, :, H:], qkv[:, :, H + H_kv :]

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None
    ) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self._qkv(x, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
        if cache is not None:
            y = cache.attend(self.layer, q, k, v)
        else:
            # enable_gqa lets each group of query heads read its shared k/v head without copies.
            y = F.scaled_dot_product_attention(
                q,
                k,
                v,
                dropout_p=self.dropout if self.training else 0.0,
                is_causal=True,
                enable_gqa=self.n_kv_head != self.n_head,
            )
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.attn = CausalSelfAttention(config, layer)
        self.mlp = MLP(config)
        self.dropout = config.dropout

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.dropout, self.training) if self.dropout else x

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None
    ) -> torch.Tensor:
        x = x + self._drop(self.attn(norm(x), cos, sin, cache))
        return x + self._drop(self.mlp(norm(x)))


class NanoChatModel(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        cos, sin = rotary_tables(
            config.context_len, config.n_embd // config.n_head, config.rope_base
        )
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """nanochat's init: unit embeddings, output projections and head start near zero, so
        each block starts as the identity and the first logits are almost uniform."""
        nn.init.normal_(self.wte.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=0.001)
        for block in self.blocks:
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                bound = math.sqrt(3.0 / lin.in_features)  # uniform with std 1/sqrt(fan_in)
                nn.init.uniform_(lin.weight, -bound, bound)
            nn.init.zeros_(block.attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(logits (B, T, vocab), None) without targets; (None, loss) with them: the mean
        cross-entropy over the targets that are not IGNORE_INDEX (-100). Training never returns
        the float32 logits, so a compiled model fuses softcap and cross-entropy instead of
        writing B * T * vocab floats to memory (8.6 GB a step for d12 at vocab 65,536).
        With a cache, input_ids continue the cached tokens (at the cache's positions)."""
        logits = self.logits(self.hidden_states(input_ids, cache))
        if targets is None:
            return logits, None
        loss_sum = F.cross_entropy(
            logits.view(-1, logits.size(-1)),
            targets.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        # A batch with no learned targets has loss 0, not the NaN that a plain mean would give.
        n_targets = (targets != IGNORE_INDEX).sum().clamp(min=1)
        return None, loss_sum / n_targets

    def hidden_states(self, input_ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """The final normalized hidden states (B, T, n_embd), before the head."""
        T = input_ids.shape[1]
        if cache is None:
            if T > self.config.context_len:
                raise ValueError(
                    f"sequence of {T} tokens exceeds context_len {self.config.context_len}"
                )
            cos, sin = self.cos[None, :T], self.sin[None, :T]
        else:
            positions = cache.positions(T)
            cos, sin = self.cos[positions], self.sin[positions]
        x = norm(self.wte(input_ids))
        for block in self.blocks:
            x = block(x, cos, sin, cache)
        if cache is not None:
            cache.advance(T)
        return norm(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """float32 logits of hidden states, squashed by softcap * tanh(logits / softcap)."""
        logits = self.lm_head(x).float()
        cap = self.config.logit_softcap
        return cap * torch.tanh(logits / cap)
