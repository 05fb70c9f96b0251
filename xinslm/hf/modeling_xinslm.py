"""XinslmForCausalLM: xinslm's NanoChatModel as a Hugging Face transformers model.

This file is copied into every exported model folder and loaded by transformers with
`trust_remote_code=True`, so it imports only torch and transformers (never `xinslm`). It
computes the same function as xinslm/model.py, layer for layer:
- RMSNorm without learned scale (F.rms_norm, default eps) on the embeddings, before each
  attention and MLP, on q and k after the rotary embedding (QK-norm), and before the head;
- rotary embeddings in xinslm's own layout: channel i is paired with i + head_dim/2, and the
  pair (a, b) becomes (a cos + b sin, b cos - a sin);
- grouped-query attention (n_kv_head key/value heads), a ReLU^2 MLP, no biases;
- an untied head, its float32 logits squashed by softcap * tanh(logits / softcap).
Parameter names equal NanoChatModel's state_dict keys (wte.weight, blocks.0.attn.c_q.weight,
..., lm_head.weight), so an xinslm state_dict loads into it unchanged.

The KV cache is transformers' own (a `Cache`, DynamicCache by default), so `generate()` and
its cache options work; keys are cached after RoPE and QK-norm, as in xinslm.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_xinslm import XinslmConfig

IGNORE_INDEX = -100  # the label of a position with no target, as in xinslm and transformers

# transformers 5 renamed the output's `past_key_values` field to `cache`; fill whichever the
# installed version declares, so neither version warns or fails.
_OUTPUT_FIELDS = CausalLMOutputWithPast.__dataclass_fields__
_CACHE_FIELD = "cache" if "cache" in _OUTPUT_FIELDS else "past_key_values"
# SDPA shares k/v heads among query heads itself (no copies) from torch 2.5 on.
_SDPA_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)


def norm(x: torch.Tensor) -> torch.Tensor:
    """RMSNorm over the last dimension without a learned scale (xinslm's `norm`)."""
    return F.rms_norm(x, (x.size(-1),))


def rotary_cos_sin(
    position_ids: torch.Tensor, head_dim: int, base: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (B or 1, T, head_dim) at these positions, laid out as xinslm's
    `rotary_tables`: both halves share an angle, and sin is negated in the second half.

    Computed from the positions at each call rather than kept as a buffer: transformers builds
    the model on the meta device before loading the weights, so a non-persistent buffer made in
    __init__ would be left empty; and the same float32 ops as xinslm give the same values."""
    inv_freq = 1.0 / base ** (
        torch.arange(0, head_dim, 2, dtype=torch.float32, device=position_ids.device) / head_dim
    )
    angles = position_ids.to(torch.float32)[..., None] * inv_freq  # (B, T, head_dim / 2)
    return torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin(), -angles.sin()], -1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (i, i + d/2) of x (B, T, H, D); cos, sin are (B or 1, T, D)."""
    d = x.shape[-1] // 2
    swapped = torch.cat([x[..., d:], x[..., :d]], dim=-1)
    cos, sin = cos[:, :, None, :].to(x.dtype), sin[:, :, None, :].to(x.dtype)
    return x * cos + swapped * sin


def attention_bias(
    attention_mask: torch.Tensor | None, past: int, T: int, S: int, device: torch.device
) -> torch.Tensor | None:
    """The boolean SDPA mask (B or 1, 1, T, S) of T new queries over S cached + new keys, or
    None when plain causal attention (is_causal) is exact: nothing cached and no padding.

    Query i sits at cache slot past + i and sees slots up to its own. With a 2D padding mask
    (B, past + T), 1 for real tokens, padding keys are hidden too; each query always sees its
    own slot, so a padding query's row is never empty: older torch versions and some kernels
    return NaN for an empty row, which would reach real tokens through the padding's values
    (0 weight times NaN is NaN). A 4D mask (as transformers prepares for static caches) is
    used as given."""
    if attention_mask is not None and attention_mask.dim() == 4:
        return attention_mask
    if attention_mask is None and S == T:
        return None
    slots = torch.arange(S, device=device)
    query_slots = past + torch.arange(T, device=device)
    mask = (slots[None, :] <= query_slots[:, None])[None, None]  # (1, 1, T, S)
    if attention_mask is not None:
        keys = attention_mask.to(device=device, dtype=torch.bool)[:, :S]
        # A static cache has more slots than tokens seen; the unseen ones are hidden anyway.
        keys = F.pad(keys, (0, S - keys.shape[1]), value=False)
        own = slots[None, :] == query_slots[:, None]
        mask = (mask & keys[:, None, None, :]) | own[None, None]
    return mask


class XinslmAttention(nn.Module):
    def __init__(self, config: XinslmConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx  # this layer's slot in the transformers Cache
        self.n_head, self.n_kv_head = config.n_head, config.n_kv_head
        self.head_dim = config.n_embd // config.n_head
        self.c_q = nn.Linear(config.n_embd, self.n_head * self.head_dim, bias=False)
        self.c_k = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_v = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.c_proj.zero_init = True  # for _init_weights: the block starts as the identity
        self.dropout = config.dropout

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attention_mask: torch.Tensor | None,
        past: int,
        cache: Cache | None,
    ) -> torch.Tensor:
        B, T, C = x.shape
        H, H_kv, D = self.n_head, self.n_kv_head, self.head_dim
        q = norm(apply_rotary(self.c_q(x).view(B, T, H, D), cos, sin)).transpose(1, 2)
        k = norm(apply_rotary(self.c_k(x).view(B, T, H_kv, D), cos, sin)).transpose(1, 2)
        v = self.c_v(x).view(B, T, H_kv, D).transpose(1, 2)  # (B, H_kv, T, D)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # all keys so far, this step's included
        mask = attention_bias(attention_mask, past, T, k.shape[2], x.device)
        gqa = {}
        if H_kv != H:
            if _SDPA_GQA:
                gqa = {"enable_gqa": True}
            else:  # older torch: give each query head its own copy of its k/v head
                k, v = k.repeat_interleave(H // H_kv, 1), v.repeat_interleave(H // H_kv, 1)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            # Without a mask, T == S: nothing cached, so plain causal attention (as xinslm's
            # training and prefill), which lets GPUs run flash attention.
            is_causal=mask is None and T > 1,
            **gqa,
        )
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class XinslmMLP(nn.Module):
    def __init__(self, config: XinslmConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)
        self.c_proj.zero_init = True  # for _init_weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.relu(self.c_fc(x)).square())


class XinslmBlock(nn.Module):
    def __init__(self, config: XinslmConfig, layer_idx: int) -> None:
        super().__init__()
        self.attn = XinslmAttention(config, layer_idx)
        self.mlp = XinslmMLP(config)
        self.dropout = config.dropout

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.dropout, self.training) if self.dropout else x

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attention_mask: torch.Tensor | None,
        past: int,
        cache: Cache | None,
    ) -> torch.Tensor:
        x = x + self._drop(self.attn(norm(x), cos, sin, attention_mask, past, cache))
        return x + self._drop(self.mlp(norm(x)))


class XinslmForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = XinslmConfig
    base_model_prefix = ""  # no base-model wrapper: keys are NanoChatModel's, unprefixed
    main_input_name = "input_ids"
    _input_embed_layer = "wte"
    _no_split_modules = ["XinslmBlock"]
    _supports_sdpa = True  # attention is always F.scaled_dot_product_attention
    _supports_cache_class = True  # transformers 4.x: generate() may hand us a DynamicCache
    _supports_static_cache = True

    def __init__(self, config: XinslmConfig) -> None:
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(XinslmBlock(config, i) for i in range(config.n_layer))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """xinslm's init (model.py reset_parameters), for a model built from a config alone:
        unit embeddings, a near-zero head, zero output projections (each block starts as the
        identity), the other matrices uniform with std 1/sqrt(fan_in). transformers calls it
        per module that holds parameters, and only for weights that were not loaded."""
        if isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=1.0)
        elif module is self.lm_head:
            nn.init.normal_(module.weight, std=0.001)
        elif isinstance(module, nn.Linear) and getattr(module, "zero_init", False):
            nn.init.zeros_(module.weight)
        elif isinstance(module, nn.Linear):
            bound = math.sqrt(3.0 / module.in_features)
            nn.init.uniform_(module.weight, -bound, bound)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.wte = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(  # noqa: PLR0913 (transformers' forward signature)
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast | tuple:
        """Logits (B, T, vocab) of input_ids (or inputs_embeds, i.e. wte's output) following
        what `cache` holds. transformers 5 passes the cache as `cache`, 4 as
        `past_key_values`; either is accepted. `cache_position` and other generate() extras
        arrive in kwargs and are not needed: positions come from position_ids, else from the
        cache's length. With labels (unshifted, as transformers gives them), the mean
        next-token cross-entropy over labels that are not -100."""
        cache = cache if cache is not None else past_key_values
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        if use_cache and cache is None:
            cache = DynamicCache()
        if attention_mask is not None and attention_mask.dim() == 2 and attention_mask.all():
            # No padding: drop the mask, so that attention takes its causal fast paths.
            attention_mask = None
        x = self.wte(input_ids) if inputs_embeds is None else inputs_embeds
        T = x.shape[1]
        past = int(cache.get_seq_length()) if cache is not None else 0
        if past + T > self.config.context_len:
            raise ValueError(
                f"sequence of {past + T} tokens exceeds context_len {self.config.context_len}"
            )
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=x.device)[None]
        cos, sin = rotary_cos_sin(position_ids, self.config.head_dim, self.config.rope_base)
        x = norm(x)
        for block in self.blocks:
            x = block(x, cos, sin, attention_mask, past, cache)
        x = norm(x)
        if isinstance(logits_to_keep, int):  # generate() asks for the last position only
            x = x[:, -logits_to_keep:] if logits_to_keep else x
        else:
            x = x[:, logits_to_keep]
        logits = self.lm_head(x).float()
        cap = self.config.logit_softcap
        logits = cap * torch.tanh(logits / cap)
        loss = None if labels is None else self._loss(logits, labels, kwargs)
        output = CausalLMOutputWithPast(
            loss=loss, logits=logits, **{_CACHE_FIELD: cache if use_cache else None}
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if return_dict else output.to_tuple()

    @staticmethod
    def _loss(logits: torch.Tensor, labels: torch.Tensor, kwargs: dict) -> torch.Tensor:
        """Next-token cross-entropy: position t predicts labels[t + 1]. Divided by the
        Trainer's num_items_in_batch when given (gradient accumulation), else by the count."""
        targets = labels[:, 1:].to(logits.device)
        loss = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)),
            targets.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        count = kwargs.get("num_items_in_batch")
        if count is None:
            count = (targets != IGNORE_INDEX).sum().clamp(min=1)
        return loss / count
