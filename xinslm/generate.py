"""Generation from a trained model: the reference generator of one sequence, and a chat reply
and a text continuation through the engine.

`generate` is the plainest correct decoder, kept as the reference the engine (engine.py) is
tested against: one sequence, torch's generator, a KV cache in the model's dtype (the prompt
fed once, then one position per token), or with `use_cache=False` the whole sequence
recomputed at every step (the tests check that both give the same tokens).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from xinslm.chat_template import decode_reply, render_prompt
from xinslm.engine import Engine
from xinslm.errors import XinslmError
from xinslm.model import KVCache, NanoChatModel
from xinslm.sampling import Sampling, sample_next

if TYPE_CHECKING:
    from xinslm.tokenizer import Tokenizer
    from xinslm.tool_calls import Calculator


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
    weight = next(model.parameters())
    device = weight.device
    generator = torch.Generator(device=device).manual_seed(sampling.seed)
    ids = torch.tensor([prompt], dtype=torch.long, device=device)
    cache = KVCache(model.config, 1, device, weight.dtype) if use_cache else None
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


def chat_replies(
    engine: Engine,
    tokenizer: Tokenizer,
    conversations: list[list[dict]],
    sampling: Sampling,
    tool: Calculator | None = None,
) -> list[str]:
    """The model's next assistant message after each conversation (each ends with a user
    turn), decoded together; with a tool, its calls answered (shown as <<expr=result>>)."""
    prompts = [render_prompt(conversation, tokenizer) for conversation in conversations]
    replies = engine.generate_many(prompts, [sampling] * len(prompts), {tokenizer.end_id}, tool)
    return [decode_reply(tokenizer, ids) for ids in replies]


def continuations(
    engine: Engine, tokenizer: Tokenizer, texts: list[str], sampling: Sampling
) -> list[str]:
    """The model's continuation of each text, as a document that starts with BOS."""
    prompts = [[tokenizer.bos_id, *tokenizer.encode(text)] for text in texts]
    replies = engine.generate_many(prompts, [sampling] * len(prompts), {tokenizer.bos_id})
    return [tokenizer.decode(ids) for ids in replies]
