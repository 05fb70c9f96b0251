"""How the next token is picked: the settings (`Sampling`), the one-sequence rule of the
reference generator (`sample_next`) and the batched rule of the engine (`sample_rows`).

`sample_rows` runs on the device for a whole batch at once, each row with its own settings
and seed, with no host round trip, so a CUDA graph can hold it. Its randomness is a hash of
(seed, how many tokens the sequence has drawn, token id) turned into Gumbel noise: the
argmax of logits / temperature + Gumbel noise is a sample of softmax(logits / temperature).
So a request's tokens depend on its seed alone, never on which other requests share its
batch, and the same seed gives the same text alone or in a batch of 64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from xinslm.config import check_sampling


@dataclass(frozen=True)
class Sampling:
    """How the next tokens are picked: at most max_new_tokens of them, each sampled at
    `temperature` (0: the likeliest, greedy) among the top_k likeliest and the fewest whose
    probabilities sum to top_p (None: no such cut), with randomness from `seed`. Settings out
    of bounds raise SamplingError (an XinslmError naming the setting)."""

    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int | None = 50
    top_p: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        # The one check of these settings (config.check_sampling): SamplingError names the
        # setting, for each caller to report its own way.
        check_sampling(self.max_new_tokens, self.temperature, self.top_k, self.top_p, self.seed)


def sample_next(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator,
) -> int:
    """Pick the next token id from last-position logits (vocab,); temperature 0 is greedy.
    The reference generator's rule (torch's generator, one sequence)."""
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


_M32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9  # 2^32 / golden ratio: consecutive multiples of it spread over 32 bits


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (Wellons' lowbias32) on int64 tensors holding values below 2^32;
    the constants are below 2^31, so no product overflows."""
    x = x ^ (x >> 16)
    x = (x * 0x21F0AAAD) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x735A2D97) & _M32
    return x ^ (x >> 15)


def seed_key(seed: int) -> int:
    """A request's seed (any int) as the 32-bit key sample_rows takes, mixed on the host once
    (splitmix64's finalizer), so that nearby seeds give unrelated keys."""
    x = (seed + _GOLDEN) & (2**64 - 1)
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return (x ^ (x >> 31)) & _M32


def gumbel_noise(key: torch.Tensor, drawn: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Gumbel(0, 1) noise (B, V) for token ids (B, V), a pure function of each row's key
    (seed_key) and drawn count (B,) and the token id. Few operations: on a CPU each costs
    microseconds whatever its size, and a decode step is made of them."""
    row = _mix32((key + drawn * _GOLDEN) & _M32)
    bits = _mix32(row[:, None] ^ ids)
    u = ((bits >> 8).float() + 0.5) / 16777216.0  # 24 bits: uniform in (0, 1), never 0 or 1
    return -torch.log(-torch.log(u))


class RowSettings(NamedTuple):
    """Each row's sampling settings as tensors (B,): temperature (0: greedy), top_k (V: no
    cut), top_p (inf: no cut) and key (seed_key of its seed)."""

    temperature: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    key: torch.Tensor


def sample_rows(
    logits: torch.Tensor, settings: RowSettings, drawn: torch.Tensor, cuts: bool = True
) -> torch.Tensor:
    """The next token id (B,) of each row of logits (B, V), under that row's settings and
    drawn count (B,). The same cuts as sample_next: top_k first, then top_p over what top_k
    kept. `cuts=False` (no row cuts anything) skips the sort and gives the same tokens."""
    temperature, top_k, top_p, key = settings
    logits = logits.float()
    greedy = logits.argmax(-1)
    scaled = logits / temperature.clamp(min=1e-6)[:, None]
    if not cuts:
        ids = torch.arange(logits.shape[-1], device=logits.device).expand_as(scaled)
        picked = (scaled + gumbel_noise(key, drawn, ids)).argmax(-1)
        return torch.where(temperature > 0, picked, greedy)
    ordered, order = scaled.sort(-1, descending=True)
    rank = torch.arange(logits.shape[-1], device=logits.device)
    ordered = ordered.masked_fill(rank >= top_k[:, None], float("-inf"))
    probs = ordered.softmax(-1)
    ordered = ordered.masked_fill(probs.cumsum(-1) - probs >= top_p[:, None], float("-inf"))
    pick = (ordered + gumbel_noise(key, drawn, order)).argmax(-1, keepdim=True)
    return torch.where(temperature > 0, order.gather(-1, pick)[:, 0], greedy)
