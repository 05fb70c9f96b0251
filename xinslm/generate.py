"""Sampling from a trained model: temperature and top-k, a seed, a stop token.

Each new token recomputes the whole (at most context_len) window; simple and exact, and fast
enough for the small models this trains on a CPU.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from xinslm.model import NanoChatModel


@torch.no_grad()
def generate(
    model: NanoChatModel,
    prompt: list[int],
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = 50,
    seed: int = 0,
    stop_id: int | None = None,
) -> Iterator[int]:
    """Yield new token ids one at a time until max_new_tokens or stop_id (not yielded).

    temperature 0 is greedy decoding."""
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    ids = torch.tensor([prompt], dtype=torch.long, device=device)
    for _ in range(max_new_tokens):
        window = ids[:, -model.config.context_len :]
        logits, _ = model(window)
        logits = logits[0, -1]
        if temperature == 0:
            next_id = int(logits.argmax())
        else:
            logits = logits / temperature
            if top_k is not None and top_k < logits.numel():
                kth = torch.topk(logits, top_k).values[-1]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = torch.softmax(logits, dim=-1)
            next_id = int(torch.multinomial(probs, 1, generator=generator))
        if next_id == stop_id:
            return
        yield next_id
        ids = torch.cat([ids, torch.tensor([[next_id]], device=device)], dim=1)
