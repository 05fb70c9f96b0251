"""Batches of (input_ids, labels) for both stages, from the token artifacts.

Each training iterator visits its examples in an order fixed by the seed, one shuffled pass
(epoch) after another, and can report and restore its position (`state_dict`), so a run can
resume exactly. Labels are the next token where it is learned, else IGNORE_INDEX (-100).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from xinslm.artifact import open_array, read_meta
from xinslm.errors import XinslmError
from xinslm.model import IGNORE_INDEX

if TYPE_CHECKING:
    from xinslm.blocks import TokenBlocks

Batch = tuple[torch.Tensor, torch.Tensor]  # (input_ids, labels), both (B, T) int64


def shifted_labels(ids: torch.Tensor, learned: torch.Tensor) -> torch.Tensor:
    """labels[i] = ids[i + 1] where that token is learned, else IGNORE_INDEX; the last
    position has no next token."""
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:-1] = torch.where(learned[1:].bool(), ids[1:], IGNORE_INDEX)
    return labels


class ShuffledIndices:
    """Endless batches of example indices: a seeded permutation per epoch, in order.

    With several processes (world > 1), each step takes a global batch of batch_size * world
    indices and process `rank` gets its slice of them: together they read exactly what one
    process with a batch of batch_size * world would, whatever the number of processes."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        if n <= 0:
            raise XinslmError("no training examples")
        self.n, self.batch_size, self.seed = n, batch_size * world, seed
        self.part = slice(rank * batch_size, (rank + 1) * batch_size)
        self.epoch, self.cursor = 0, 0
        self._cached_epoch, self._cached = -1, np.empty(0, dtype=np.int64)

    def _order(self, epoch: int) -> np.ndarray:
        # One permutation per epoch, kept, not redrawn for every batch (O(n) each time).
        if self._cached_epoch != epoch:
            self._cached = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            self._cached_epoch = epoch
        return self._cached

    def next(self) -> np.ndarray:
        return self.next_with_epochs()[0]

    def next_with_epochs(self) -> tuple[np.ndarray, np.ndarray]:
        """The next batch of indices and the epoch each one belongs to."""
        out, epochs = [], []
        while len(out) < self.batch_size:
            take = min(self.batch_size - len(out), self.n - self.cursor)
            out.extend(self._order(self.epoch)[self.cursor : self.cursor + take])
            epochs.extend([self.epoch] * take)
            self.cursor += take
            if self.cursor == self.n:
                self.epoch, self.cursor = self.epoch + 1, 0
        return np.asarray(out)[self.part], np.asarray(epochs)[self.part]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])


class BlockBatches:
    """Pretraining batches of T+1-token windows; input = window[:-1], labels = window[1:].

    `blocks` are pack's [N, T+1] blocks with stride T (block k holds stream kT .. kT+T, read
    from data/tokens by xinslm.blocks.TokenBlocks, or any array of that shape), so block k and
    block k+1 without its first token hold stream kT .. kT+2T.
    With shift, the window of block k starts at a seeded random offset s in [0, T) into that
    span, drawn anew for every block and epoch: an epoch still reads about every token once,
    but at other positions and with other context than before (nanoGPT samples windows at
    random offsets for the same reason: on a small corpus fixed blocks are memorized sooner).
    Without shift, the windows are the blocks.
    """

    def __init__(
        self,
        blocks: TokenBlocks | np.ndarray,
        batch_size: int,
        seed: int,
        shift: bool = False,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.blocks, self.seed = blocks, seed
        self.shift = shift and len(blocks) > 1  # the last block has no successor to shift into
        self.indices = ShuffledIndices(len(blocks) - self.shift, batch_size, seed, rank, world)
        self._offsets: tuple[int, np.ndarray] = (-1, np.empty(0, dtype=np.int64))

    def offsets(self, epoch: int) -> np.ndarray:
        """Where each block's window starts in epoch `epoch` (all 0 without shift)."""
        if not self.shift:
            return np.zeros(self.indices.n, dtype=np.int64)
        if self._offsets[0] != epoch:
            context_len = self.blocks.shape[1] - 1
            rng = np.random.default_rng([self.seed, epoch, 1])  # not the permutation's stream
            self._offsets = (epoch, rng.integers(context_len, size=self.indices.n))
        return self._offsets[1]

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        rows, epochs = self.indices.next_with_epochs()
        if self.shift:
            width = self.blocks.shape[1]  # T + 1
            span = np.concatenate([self.blocks[rows], self.blocks[rows + 1, 1:]], axis=1)
            starts = np.array([self.offsets(int(e))[r] for r, e in zip(rows, epochs, strict=True)])
            windows = span[np.arange(len(rows))[:, None], starts[:, None] + np.arange(width)]
        else:
            windows = self.blocks[rows]
        windows = torch.from_numpy(windows.astype(np.int64))
        return windows[:, :-1], windows[:, 1:]

    def state_dict(self) -> dict:
        return self.indices.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.indices.load_state_dict(state)


def val_block_batches(
    blocks: TokenBlocks | np.ndarray, batch_size: int, max_batches: int
) -> Iterator[Batch]:
    """The first `max_batches` batches of the val blocks, always the same ones."""
    for first in range(0, min(len(blocks), batch_size * max_batches), batch_size):
        rows = torch.from_numpy(blocks[first : first + batch_size].astype(np.int64))
        yield rows[:, :-1], rows[:, 1:]


class ChatData:
    """Rendered conversations of one split: ids, learned flags and offsets (memory-mapped)."""

    def __init__(self, directory: str | Path, split: str, tokenizer: dict | None = None) -> None:
        self.meta = read_meta(directory, "chat", tokenizer)
        self.ids = open_array(directory, self.meta, f"{split}_ids")
        self.mask = open_array(directory, self.meta, f"{split}_mask")
        self.offsets = open_array(directory, self.meta, f"{split}_offsets")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def batch(self, indices: np.ndarray, pad_to: int = 1) -> Batch:
        """Right-padded (input_ids, labels); labels[i] = ids[i+1] where learned, else -100.
        The width is a multiple of pad_to (at most context_len), so that a compiled model
        sees a few shapes rather than one per batch."""
        spans = [(int(self.offsets[i]), int(self.offsets[i + 1])) for i in indices]
        width = max(end - start for start, end in spans)
        width = max(width, min(-(-width // pad_to) * pad_to, self.meta["context_len"]))
        input_ids = torch.zeros(len(spans), width, dtype=torch.int64)
        labels = torch.full((len(spans), width), IGNORE_INDEX, dtype=torch.int64)
        for row, (start, end) in enumerate(spans):
            ids = torch.from_numpy(self.ids[start:end].astype(np.int64))
            learned = torch.from_numpy(self.mask[start:end].astype(np.bool_))
            input_ids[row, : end - start] = ids
            labels[row, : end - start] = shifted_labels(ids, learned)
        return input_ids, labels


class ChatBatches:
    """SFT batches: shuffled conversations, padded to the longest in the batch."""

    def __init__(
        self,
        data: ChatData,
        batch_size: int,
        seed: int,
        pad_to: int = 1,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.data, self.pad_to = data, pad_to
        self.indices = ShuffledIndices(len(data), batch_size, seed, rank, world)

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        return self.data.batch(self.indices.next(), self.pad_to)

    def state_dict(self) -> dict:
        return self.indices.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.indices.load_state_dict(state)


class MixedBatches:
    """SFT batches with pretraining text kept in: each chat batch of `chats` gets the rows of a
    batch of `text` (BlockBatches, whole windows, every token learned) appended, the chat rows
    right-padded to the windows' width. Replaying some of the pretraining stream is what keeps
    a fine-tuned model from forgetting how to continue prose (nanochat's SFT mixture keeps
    general text in for the same reason). The windows' width never depends on the chats, so
    processes under DDP, each padding its own chats, train on what one process would. The two
    iterators keep their own positions."""

    def __init__(self, chats: ChatBatches, text: BlockBatches) -> None:
        self.chats, self.text = chats, text

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        chat_x, chat_y = next(self.chats)
        text_x, text_y = next(self.text)
        pad = text_x.shape[1] - chat_x.shape[1]  # >= 0: sft checks the chats fit the context
        chat_x = torch.nn.functional.pad(chat_x, (0, pad))
        chat_y = torch.nn.functional.pad(chat_y, (0, pad), value=IGNORE_INDEX)
        return torch.cat([chat_x, text_x]), torch.cat([chat_y, text_y])

    def state_dict(self) -> dict:
        return {"chats": self.chats.state_dict(), "text": self.text.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.chats.load_state_dict(state["chats"])
        self.text.load_state_dict(state["text"])


def val_chat_batches(data: ChatData, batch_size: int, max_batches: int) -> Iterator[Batch]:
    """The first `max_batches` batches of val conversations, always the same ones."""
    for first in range(0, min(len(data), batch_size * max_batches), batch_size):
        yield data.batch(np.arange(first, min(len(data), first + batch_size)))


class Prefetcher:
    """The batches of `batches`, made ahead on a background thread (in pinned memory on a GPU)
    and copied to `device` without blocking, so the next batch is ready while a step runs.
    state_dict() is the position after the batches handed out, not after those made ahead,
    so a resume checkpoint taken between steps continues exactly. The thread starts with the
    first batch asked for, so a resumed position can be loaded before. Close it (or use it as
    a context manager) to stop the thread."""

    def __init__(
        self,
        batches: BlockBatches | ChatBatches | MixedBatches,
        device: torch.device,
        ahead: int = 2,
    ):
        self.batches, self.device = batches, torch.device(device)
        self._state = batches.state_dict()
        self._queue: queue.Queue = queue.Queue(maxsize=ahead)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, daemon=True, name="prefetch")

    def _put(self, item: object) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _fill(self) -> None:
        try:
            while not self._stop.is_set():
                x, y = next(self.batches)
                if self.device.type == "cuda":
                    x, y = x.pin_memory(), y.pin_memory()
                self._put((x, y, self.batches.state_dict()))
        except BaseException as e:  # handed to the training thread, raised there
            self._put(e)

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        if self._thread.ident is None:  # not started yet
            self._thread.start()
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        x, y, self._state = item
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def state_dict(self) -> dict:
        return self._state

    def load_state_dict(self, state: dict) -> None:
        if self._thread.ident is not None:
            raise RuntimeError("a prefetcher's position can only be set before it starts")
        self.batches.load_state_dict(state)
        self._state = self.batches.state_dict()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
