"""Sampling from a trained model: temperature, top-k, top-p, a seed, a stop token, KV cache;
a chat reply and a text continuation.

With the cache (the default) the prompt is fed through the model once and each new token
costs one position; `use_cache=False` recomputes the whole sequence at every step, which
gives the same tokens (the tests check it) and is kept as the reference.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from xinslm.chat_template import render_prompt
from xinslm.errors import XinslmError
from xinslm.model import KVCache, NanoChatModel

if TYPE_CHECKING:
    from xinslm.tokenizer import Tokenizer


@dataclass(frozen=True)
class Sampling:
    """How the next tokens are picked: at most max_new_tokens of them, each sampled at
    `temperature` (0: the likeliest, greedy) among the top_k likeliest and the fewest whose
    probabilities sum to top_p (None: no such cut), from a generator seeded with `seed`."""

    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int | None = 50
    top_p: float | None = None
    seed: int = 0


def sample_next(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator,
) -> int:
    """Pick the next token id from last-position logits (vocab,); temperature 0 is greedy."""
    if temperature == 0:
        return int(logits.argmax())
    logits = logits.float() / temperature
    if top_k is not None and 0 < top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        # Drop a token once the likelier ones before it already cover top_p (keep at least one).
        drop = sorted_probs.cumsum(0) - sorted_probs >= top_p
        probs = probs.scatter(0, order, sorted_probs.masked_fill(drop, 0.0))
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.no_grad()
def generate(
    model: NanoChatModel,
    prompt: list[int],
    sampling: Sampling = Sampling(),  # noqa: B008 (frozen: shared safely)
    stop_id: int | None = None,
    use_cache: bool = True,
) -> Iterator[int]:
    """Yield new token ids one at a time until sampling.max_new_tokens, stop_id (not
    yielded), or the model's context is full."""
    context_len = model.config.context_len
    if not prompt:
        raise XinslmError("empty prompt: give at least one token (e.g. BOS)")
    if len(prompt) >= context_len:
        raise XinslmError(f"prompt of {len(prompt)} tokens fills the context ({context_len})")
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(sampling.seed)
    ids = torch.tensor([prompt], dtype=torch.long, device=device)
    cache = KVCache(model.config, 1, device) if use_cache else None
    logits, _ = model(ids, cache=cache)
    steps = min(sampling.max_new_tokens, context_len - len(prompt))
    s = sampling
    for step in range(steps):
        next_id = sample_next(logits[0, -1], s.temperature, s.top_k, s.top_p, generator)
        if next_id == stop_id:
            return
        yield next_id
        if step == steps - 1:  # the last token needs no forward pass of its own
            return
        new = torch.tensor([[next_id]], device=device)
        ids = torch.cat([ids, new], dim=1)
        logits, _ = model(new, cache=cache) if use_cache else model(ids)


def chat_reply(
    model: NanoChatModel, tokenizer: Tokenizer, conversation: list[dict], sampling: Sampling
) -> str:
    """The model's next assistant message after `conversation` (which ends with a user turn)."""
    prompt = render_prompt(conversation, tokenizer)
    return tokenizer.decode(list(generate(model, prompt, sampling, stop_id=tokenizer.end_id)))


def continuation(model: NanoChatModel, tokenizer: Tokenizer, text: str, sampling: Sampling) -> str:
    """The model's continuation of `text`, as a document that starts with BOS."""
    prompt = [tokenizer.bos_id, *tokenizer.encode(text)]
    return tokenizer.decode(list(generate(model, prompt, sampling, stop_id=tokenizer.bos_id)))
