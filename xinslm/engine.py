"""The inference engine: many sequences decoded together, each with its own prompt, sampling
settings, seed, stop tokens and length limit, joining and leaving between steps (continuous
batching).

- The KV cache is allocated once, in the model's dtype (bfloat16 on CUDA): a row per
  sequence, the whole context long. Live sequences hold rows 0..n-1; when one leaves, the
  last one moves into its row, so a step only touches the first n rows.
- A new sequence's prompt goes through the model in one prefill pass that fills its row
  and gives its first token.
- A decode step feeds every live sequence's last token at that sequence's own position and
  samples the next ones on the device (sampling.sample_rows). Its inputs and outputs live in
  fixed device tensors, so on CUDA it is recorded once per (batch, length, sampling mode)
  bucket as a CUDA graph and then replayed: one launch per step, and one read of the new
  tokens per step for the whole batch, whatever the number of sequences.
- A sequence with a tool (tool_calls.Calculator) has the tool's result forced in after a
  call: for each result token, the token sampled at that step is replaced by it, on the
  host and in the row's device state, so the model reads the result before going on.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from xinslm.errors import XinslmError
from xinslm.model import KVCache, NanoChatModel
from xinslm.sampling import RowSettings, Sampling, sample_rows, seed_key

if TYPE_CHECKING:
    from xinslm.tool_calls import Calculator


@dataclass(eq=False)
class Sequence:
    """One request: its prompt and settings, the tokens it got so far, and why it ended
    ("stop": a stop token, "length": max_new_tokens or the context, "cancelled")."""

    prompt: list[int]
    sampling: Sampling
    stop_ids: frozenset[int] = frozenset()
    tool: Calculator | None = None
    tokens: list[int] = field(default_factory=list)
    forced: deque[int] = field(default_factory=deque)  # the tool's tokens still to feed
    finish_reason: str | None = None
    cancelled: bool = False  # set from any thread; the engine drops it at its next step

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


class RowCache:
    """The engine's cache as the model sees it in a decode step: row b's new token goes to
    position pos[b] and attends to keys 0..pos[b]; only the first len(key_positions)
    positions are read. The mask is built once per step, on the first layer's call. Same
    protocol as model.KVCache (positions, attend, advance)."""

    def __init__(
        self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, key_positions: torch.Tensor
    ) -> None:
        self.k, self.v, self.pos, self.key_positions = k, v, pos, key_positions
        # Where each row's new key goes, as a row of the layer's cache seen as a
        # (rows * heads * context, head_dim) table: one index_copy_ per layer writes them all.
        B, heads, context, _ = k.shape[1:]
        row_starts = torch.arange(B * heads, device=pos.device) * context
        self.slots = row_starts + pos.repeat_interleave(heads)
        self.mask: torch.Tensor | None = None

    def positions(self, T: int) -> torch.Tensor:
        return self.pos[:, None]

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        B, H, _, D = q.shape
        self.k[layer].view(-1, D).index_copy_(0, self.slots, k.reshape(-1, D))
        self.v[layer].view(-1, D).index_copy_(0, self.slots, v.reshape(-1, D))
        length = self.key_positions.shape[0]
        keys, values = self.k[layer, :, :, :length], self.v[layer, :, :, :length]
        if self.mask is None:  # 0 where row b sees key j (j <= pos[b]), -inf elsewhere
            seen = self.key_positions <= self.pos[:, None]
            self.mask = torch.zeros(seen.shape, dtype=q.dtype, device=q.device)
            self.mask = self.mask.masked_fill(~seen, float("-inf"))[:, None, None]
        # One query per head: the query heads sharing a k/v head are that head's queries.
        kv_heads = keys.shape[1]
        y = F.scaled_dot_product_attention(
            q.reshape(B, kv_heads, H // kv_heads, D), keys, values, attn_mask=self.mask
        )
        return y.reshape(B, H, 1, D)

    def advance(self, T: int) -> None:
        pass  # the engine moves each row's position itself


def _bucket(n: int, limit: int, smallest: int = 1) -> int:
    """The smallest power of two (at least `smallest`) that holds n, capped at limit."""
    size = smallest
    while size < n:
        size *= 2
    return min(size, limit)


class Engine:
    """Batched generation over one model. Not thread-safe: one thread calls `add` and
    `step` (the server's engine_worker.py); other threads may only set a sequence's
    `cancelled` flag."""

    def __init__(
        self,
        model: NanoChatModel,
        max_batch: int = 8,
        dtype: torch.dtype | None = None,
        graphs: bool | None = None,
    ) -> None:
        device = next(model.parameters()).device
        self.device, self.config, self.max_batch = device, model.config, max_batch
        self.dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        self.model = _cast(model, self.dtype).eval()
        c = self.config
        shape = (c.n_layer, max_batch, c.n_kv_head, c.context_len, c.n_embd // c.n_head)
        self.k = torch.zeros(shape, dtype=self.dtype, device=device)
        self.v = torch.zeros(shape, dtype=self.dtype, device=device)
        rows = torch.zeros(max_batch, dtype=torch.long, device=device)
        # Each row's state on the device: the next token to feed and its position, tokens
        # drawn so far, whether the row is live, and its sampling settings.
        self.token, self.pos, self.drawn = rows.clone(), rows.clone(), rows.clone()
        self.live = torch.zeros(max_batch, dtype=torch.bool, device=device)
        self.temperature = torch.zeros(max_batch, device=device)
        self.top_k, self.key = rows.clone(), rows.clone()
        self.top_p = torch.ones(max_batch, device=device)
        self.rows: list[Sequence] = []  # live sequences; rows[i] holds cache row i
        self.waiting: deque[Sequence] = deque()
        self.key_positions = torch.arange(c.context_len, device=device)
        self.use_graphs = device.type == "cuda" if graphs is None else graphs
        self._graphs: dict[tuple[int, int, str], torch.cuda.CUDAGraph] = {}
        self._done = torch.cuda.Event() if device.type == "cuda" else None

    # --- the public side -------------------------------------------------------------

    def add(
        self,
        prompt: list[int],
        sampling: Sampling,
        stop_ids: Iterable[int] = (),
        tool: Calculator | None = None,
    ) -> Sequence:
        """Queue a sequence; it joins the batch at the next step with a free row. With a
        tool, each call the sequence makes is answered (see the module docstring)."""
        context_len = self.config.context_len
        if not prompt:
            raise XinslmError("empty prompt: give at least one token (e.g. BOS)")
        if len(prompt) >= context_len:
            raise XinslmError(f"prompt of {len(prompt)} tokens fills the context ({context_len})")
        seq = Sequence(list(prompt), sampling, frozenset(stop_ids), tool)
        self.waiting.append(seq)
        return seq

    @property
    def busy(self) -> bool:
        return bool(self.rows or self.waiting)

    def step(self) -> list[Sequence]:
        """Admit waiting sequences into free rows (prefill), then one decode step for every
        live one. Returns the sequences that got tokens or ended in this step."""
        # The model's GPU is made current, whichever thread calls (streams and graphs are
        # made on the current device).
        on_device = torch.cuda.device(self.device) if self.device.type == "cuda" else nullcontext()
        with on_device, torch.inference_mode():
            return self._step()

    def _step(self) -> list[Sequence]:
        touched: dict[int, Sequence] = {}
        for seq in [s for s in self.rows if s.cancelled]:
            self._finish(seq, "cancelled")
            touched[id(seq)] = seq
        joining = []
        while self.waiting and len(self.rows) + len(joining) < self.max_batch:
            seq = self.waiting.popleft()
            touched[id(seq)] = seq
            if seq.cancelled:
                seq.finish_reason = "cancelled"
            else:
                joining.append(seq)
        if joining:
            self._prefill(joining)
        if self.rows:
            for seq in self._decode_live():
                touched[id(seq)] = seq
        return list(touched.values())

    def generate(
        self,
        prompt: list[int],
        sampling: Sampling,
        stop_ids: Iterable[int] = (),
        tool: Calculator | None = None,
    ) -> Iterator[int]:
        """Yield one sequence's new tokens as they come (the engine serves only it)."""
        seq = self.add(prompt, sampling, stop_ids, tool)
        sent = 0
        while not (seq.done and sent == len(seq.tokens)):
            if not seq.done:
                self.step()
            yield from seq.tokens[sent:]
            sent = len(seq.tokens)

    def generate_many(
        self,
        prompts: list[list[int]],
        samplings: list[Sampling],
        stop_ids: Iterable[int] = (),
        tool: Calculator | None = None,
    ) -> list[list[int]]:
        """Every prompt's new tokens, decoded together (max_batch at a time)."""
        stop = frozenset(stop_ids)
        seqs = [self.add(p, s, stop, tool) for p, s in zip(prompts, samplings, strict=True)]
        while not all(seq.done for seq in seqs):
            self.step()
        return [seq.tokens for seq in seqs]

    # --- rows ------------------------------------------------------------------------

    def _prefill(self, seqs: list[Sequence]) -> None:
        """Give the joining sequences the next rows, fill them with their prompts in one
        forward pass (right-padded: causal attention keeps the padding out of every real
        position, and decoding overwrites it before any query can see it), and sample each
        one's first token from its last prompt position."""
        start = len(self.rows)
        rows = slice(start, start + len(seqs))
        self.rows.extend(seqs)
        lengths = [len(s.prompt) for s in seqs]
        width = max(lengths)
        ids = torch.tensor([s.prompt + [0] * (width - len(s.prompt)) for s in seqs])
        cache = KVCache.over(self.k[:, rows], self.v[:, rows])
        hidden = self.model.hidden_states(ids.to(self.device), cache)
        last = torch.tensor(lengths, device=self.device) - 1
        logits = self.model.logits(hidden[torch.arange(len(seqs), device=self.device), last])
        self._set_settings(seqs, rows)
        self.pos[rows], self.drawn[rows], self.live[rows] = last + 1, 0, True
        self.token[rows] = self._sample(logits, rows, _sampling_mode(seqs))
        self.drawn[rows] = 1
        for seq, token in zip(seqs, self._read(self.token[rows]), strict=True):
            self._accept(seq, token)

    def _set_settings(self, seqs: list[Sequence], rows: slice) -> None:
        vocab = self.config.vocab_size
        values = [
            [s.sampling.temperature for s in seqs],
            [s.sampling.top_k or vocab for s in seqs],
            [s.sampling.top_p if (s.sampling.top_p or 1) < 1 else float("inf") for s in seqs],
            [seed_key(s.sampling.seed) for s in seqs],
        ]
        for state, column in zip(self._settings(), values, strict=True):
            state[rows] = torch.tensor(column, dtype=state.dtype)

    def _accept(self, seq: Sequence, token: int) -> None:
        if seq.forced:  # the tool's next token replaces the sampled one, here and on the device
            token = seq.forced.popleft()
            self.token[self.rows.index(seq)] = token
        elif token in seq.stop_ids:
            self._finish(seq, "stop")
            return
        seq.tokens.append(token)
        if seq.tool is not None and token == seq.tool.trigger:
            seq.forced.extend(seq.tool.respond(seq.tokens))
        full = len(seq.prompt) + len(seq.tokens) >= self.config.context_len
        if full or len(seq.tokens) >= seq.sampling.max_new_tokens:
            self._finish(seq, "length")

    def _finish(self, seq: Sequence, reason: str) -> None:
        """End seq and free its row: the last live row moves into it."""
        seq.finish_reason = reason
        row, last = self.rows.index(seq), len(self.rows) - 1
        if row != last:
            length = int(self.pos[last]) + 1
            self.k[:, row, :, :length] = self.k[:, last, :, :length]
            self.v[:, row, :, :length] = self.v[:, last, :, :length]
            for state in self._row_state():
                state[row] = state[last]
            self.rows[row] = self.rows[last]
        self.rows.pop()
        self.live[last], self.pos[last] = False, 0

    def _row_state(self) -> tuple[torch.Tensor, ...]:
        return (self.token, self.pos, self.drawn, self.live, *self._settings())

    def _settings(self) -> tuple[torch.Tensor, ...]:
        return (self.temperature, self.top_k, self.top_p, self.key)

    # --- the decode step -------------------------------------------------------------

    def _sample(self, logits: torch.Tensor, rows: slice, mode: str) -> torch.Tensor:
        if mode == "greedy":
            return logits.argmax(-1)
        settings = RowSettings(*(t[rows] for t in self._settings()))
        return sample_rows(logits, settings, self.drawn[rows], cuts=mode == "cuts")

    def _decode(self, batch: int, length: int, mode: str) -> None:
        """Feed each of the first `batch` rows its next token; sample the one after it."""
        rows = slice(0, batch)
        keys = self.key_positions[:length]
        cache = RowCache(self.k[:, rows], self.v[:, rows], self.pos[rows], keys)
        logits, _ = self.model(self.token[rows, None], cache=cache)
        self.token[rows] = self._sample(logits[:, -1], rows, mode)
        self.pos[rows] += self.live[rows]  # idle rows stay at position 0
        self.drawn[rows] += 1

    def _decode_live(self) -> list[Sequence]:
        seqs = list(self.rows)
        length = max(len(s.prompt) + len(s.tokens) for s in seqs)
        mode = _sampling_mode(seqs)
        if self.use_graphs:
            batch = _bucket(len(seqs), self.max_batch)
            self._graph(batch, _bucket(length, self.config.context_len, 64), mode).replay()
        else:
            self._decode(len(seqs), length, mode)
        for seq, token in zip(seqs, self._read(self.token[: len(seqs)]), strict=True):
            self._accept(seq, token)
        return seqs

    def _read(self, tokens: torch.Tensor) -> list[int]:
        """The tokens, on the host. On CUDA it waits on an event first: that wait lets go of
        Python's GIL (a plain copy to the host would hold it), so the server's event loop
        streams the last tokens while the GPU computes the next ones."""
        if self.device.type == "cuda":
            self._done.record()
            self._done.synchronize()
        return tokens.tolist()

    def _graph(self, batch: int, length: int, mode: str) -> torch.cuda.CUDAGraph:
        """The decode step for (batch, length, sampling mode), recorded on first use."""
        if (batch, length, mode) not in self._graphs:
            saved = [t.clone() for t in (self.token, self.pos, self.drawn)]
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):  # lazy initialisation (cuBLAS handles, ...) happens off-graph
                    self._decode(batch, length, mode)
            torch.cuda.current_stream().wait_stream(side)
            for t, before in zip((self.token, self.pos, self.drawn), saved, strict=True):
                t.copy_(before)
            graph = torch.cuda.CUDAGraph()
            pool = next(iter(self._graphs.values())).pool() if self._graphs else None
            with torch.cuda.graph(graph, pool=pool, stream=side):
                self._decode(batch, length, mode)
            self._graphs[(batch, length, mode)] = graph
        return self._graphs[(batch, length, mode)]


def _sampling_mode(seqs: list[Sequence]) -> str:
    """What the sampler must do for these sequences: "greedy" (all at temperature 0: an
    argmax), "plain" (no top_k or top_p cut: no sort) or "cuts"."""
    settings = [s.sampling for s in seqs]
    if all(s.temperature == 0 for s in settings):
        return "greedy"
    return "cuts" if any(s.top_k or (s.top_p or 1) < 1 for s in settings) else "plain"


def _cast(model: NanoChatModel, dtype: torch.dtype) -> NanoChatModel:
    """The model in dtype, in place: its weights and its rotary tables (which training's
    autocast casts to bfloat16 at each use anyway); each block's q, k, v projections fused."""
    model.to(dtype)
    for block in model.blocks:
        block.attn.fuse_qkv()
    return model
