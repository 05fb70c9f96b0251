"""XinslmConfig: the shape of an xinslm NanoChatModel, as a Hugging Face config.

This file is copied into every exported model folder and loaded by transformers with
`trust_remote_code=True`, so it imports only transformers (never `xinslm`). Its fields are
ModelConfig's, under the same names, so an xinslm checkpoint's `model_config` maps onto it
one to one; `attribute_map` gives transformers the standard names it reads (hidden_size,
num_hidden_layers, ...), aliases of the same values rather than copies that could disagree.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig


class XinslmConfig(PretrainedConfig):
    model_type = "xinslm"
    # Standard name -> our name: transformers (caches, generate, device maps) reads the left.
    attribute_map = {
        "hidden_size": "n_embd",
        "num_hidden_layers": "n_layer",
        "num_attention_heads": "n_head",
        "num_key_value_heads": "n_kv_head",
        "max_position_embeddings": "context_len",
    }

    # A plain __init__ (rather than dataclass fields) is what transformers 4 and 5 both accept
    # from remote code; anything else (bos/eos ids, dtype, use_cache ...) goes to the base.
    def __init__(  # noqa: PLR0913 (one argument per ModelConfig field)
        self,
        vocab_size: int = 65536,
        context_len: int = 2048,
        n_layer: int = 12,
        n_head: int = 6,
        n_kv_head: int = 6,
        n_embd: int = 768,
        logit_softcap: float = 15.0,
        dropout: float = 0.0,
        rope_base: float = 10000.0,
        use_cache: bool = True,
        **kwargs: Any,
    ) -> None:
        if n_embd % n_head or n_head % n_kv_head:
            raise ValueError(
                f"n_embd ({n_embd}) must divide by n_head ({n_head}), "
                f"and n_head by n_kv_head ({n_kv_head})"
            )
        self.vocab_size = vocab_size
        self.context_len = context_len
        self.n_layer = n_layer
        self.n_head = n_head
        self.n_kv_head = n_kv_head
        self.n_embd = n_embd
        self.logit_softcap = logit_softcap
        self.dropout = dropout
        self.rope_base = rope_base
        # transformers 5 no longer keeps use_cache on the base config; the model reads it.
        self.use_cache = use_cache
        # Derived, for code that reads config.head_dim (e.g. a static cache's preallocation).
        kwargs.pop("head_dim", None)
        self.head_dim = n_embd // n_head
        # The input embedding and the output head are separate matrices in NanoChatModel.
        kwargs["tie_word_embeddings"] = False
        super().__init__(**kwargs)
