"""Batches (xinslm.batches): each epoch visits every example once, in the seeded order, across
batches; labels; and the prefetcher, which hands out the same batches and positions."""

import numpy as np
import pytest
import torch

from xinslm.batches import (
    BlockBatches,
    MixedBatches,
    Prefetcher,
    ShuffledIndices,
    shifted_labels,
)
from xinslm.model import IGNORE_INDEX

CPU = torch.device("cpu")


def test_epochs_are_seeded_permutations_across_batch_boundaries():
    indices = ShuffledIndices(n=7, batch_size=3, seed=5)
    drawn = np.concatenate([indices.next() for _ in range(7)])  # 21 = 3 epochs of 7
    for epoch in range(3):
        expected = np.random.default_rng([5, epoch]).permutation(7)
        assert drawn[7 * epoch : 7 * (epoch + 1)].tolist() == expected.tolist()
    assert indices.state_dict() == {"epoch": 3, "cursor": 0}


def test_restored_position_continues_the_same_sequence():
    a = ShuffledIndices(n=10, batch_size=4, seed=1)
    for _ in range(3):
        a.next()
    b = ShuffledIndices(n=10, batch_size=4, seed=1)
    b.load_state_dict(a.state_dict())
    assert [a.next().tolist() for _ in range(5)] == [b.next().tolist() for _ in range(5)]


def _blocks(n=23, width=9):
    return np.arange(n * width, dtype=np.uint16).reshape(n, width) % 251


def test_shifted_labels_are_the_next_token_where_it_is_learned():
    ids = torch.tensor([5, 6, 7, 8, 9])
    learned = torch.tensor([0, 1, 1, 0, 1], dtype=torch.uint8)
    labels = shifted_labels(ids, learned)
    assert labels.tolist() == [6, 7, IGNORE_INDEX, 9, IGNORE_INDEX]  # the last has no next
    assert labels.dtype == ids.dtype
    assert shifted_labels(torch.tensor([5]), torch.tensor([1])).tolist() == [IGNORE_INDEX]


def test_prefetcher_yields_the_plain_batches_in_order_with_the_consumed_position():
    plain = BlockBatches(_blocks(), batch_size=4, seed=3)
    with Prefetcher(BlockBatches(_blocks(), batch_size=4, seed=3), CPU) as ahead:
        for _ in range(12):  # two epochs and more
            x, y = next(ahead)
            px, py = next(plain)
            assert torch.equal(x, px) and torch.equal(y, py)
            # The position is that of the batches handed out, though more were made ahead.
            assert ahead.state_dict() == plain.state_dict()
    assert not ahead._thread.is_alive()  # leaving the with block stopped the thread


def test_prefetcher_resumes_from_a_loaded_position_and_refuses_one_after_it_starts():
    plain = BlockBatches(_blocks(), batch_size=4, seed=3)
    for _ in range(7):  # into the second epoch (23 blocks)
        next(plain)
    saved = plain.state_dict()
    assert saved == {"epoch": 1, "cursor": 5}
    with Prefetcher(BlockBatches(_blocks(), batch_size=4, seed=3), CPU) as ahead:
        assert ahead.state_dict() == {"epoch": 0, "cursor": 0}
        ahead.load_state_dict(saved)  # not started yet: nothing was made ahead from 0
        assert ahead.state_dict() == saved
        for _ in range(5):
            x, y = next(ahead)
            px, py = next(plain)
            assert torch.equal(x, px) and torch.equal(y, py)
            assert ahead.state_dict() == plain.state_dict()
        with pytest.raises(RuntimeError, match="can only be set before it starts"):
            ahead.load_state_dict(saved)
        # The refused load changed nothing: the batches go on where they were.
        assert ahead.state_dict() == plain.state_dict()
        assert torch.equal(next(ahead)[0], next(plain)[0])


def test_prefetcher_raises_the_error_of_its_source():
    class Broken:
        def state_dict(self):
            return {}

        def __next__(self):
            raise ValueError("bad batch")

    with Prefetcher(Broken(), CPU) as ahead, pytest.raises(ValueError, match="bad batch"):
        next(ahead)


def _packed(stream: np.ndarray, context_len: int) -> np.ndarray:
    """Blocks as pack_blocks cuts them: stride context_len, context_len + 1 tokens each."""
    n = (len(stream) - 1) // context_len
    return stream[np.arange(n)[:, None] * context_len + np.arange(context_len + 1)]


def test_shifted_blocks_are_stream_windows_at_seeded_offsets():
    T, stream = 8, np.random.default_rng(0).integers(0, 60000, 8 * 11 + 1).astype(np.uint16)
    blocks = _packed(stream, T)  # 11 blocks
    batches = BlockBatches(blocks, batch_size=4, seed=2, shift=True)
    assert batches.indices.n == 10  # the last block has nothing after it to shift into
    offsets = [batches.offsets(e).copy() for e in range(6)]
    assert all(((0 <= o) & (o < T)).all() for o in offsets)
    assert len({tuple(o) for o in offsets}) == 6 and len(set(offsets[0])) > 1
    windows = []
    for _ in range(15):  # 60 windows = 6 epochs of 10
        x, y = next(batches)
        assert x.shape == y.shape == (4, T)
        assert torch.equal(x[:, 1:], y[:, :-1])
        windows.extend(tuple(w) for w in torch.cat([x, y[:, -1:]], dim=1).tolist())
    # epoch by epoch: the windows are stream[kT + s_k : kT + s_k + T + 1] for k = 0..9, each once
    for epoch in range(6):
        s = offsets[epoch]
        got = sorted(windows[10 * epoch : 10 * (epoch + 1)])
        want = sorted(
            tuple(stream[k * T + s[k] : k * T + s[k] + T + 1].tolist()) for k in range(10)
        )
        assert got == want


def test_shift_off_reads_the_blocks_and_resume_with_shift_is_exact():
    T, stream = 8, np.arange(8 * 11 + 1, dtype=np.uint16)
    blocks = _packed(stream, T)
    plain = BlockBatches(blocks, batch_size=3, seed=4)
    rows = plain.indices.next()
    plain.indices.load_state_dict({"epoch": 0, "cursor": 0})
    x, y = next(plain)
    assert x.tolist() == blocks[rows, :-1].tolist() and y.tolist() == blocks[rows, 1:].tolist()

    a = BlockBatches(blocks, batch_size=3, seed=4, shift=True)
    for _ in range(5):  # into the second epoch
        next(a)
    b = BlockBatches(blocks, batch_size=3, seed=4, shift=True)
    b.load_state_dict(a.state_dict())
    for _ in range(8):
        (xa, ya), (xb, yb) = next(a), next(b)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


class _Chats:
    """Stands for ChatBatches: batch k is 2 rows of width 3 + k % 3 (at most the blocks' 8),
    the last label of each row not learned."""

    def __init__(self) -> None:
        self.k = 0

    def __next__(self):
        width, self.k = 3 + self.k % 3, self.k + 1
        x = torch.full((2, width), 1000 + self.k)
        y = x.clone()
        y[:, -1] = IGNORE_INDEX
        return x, y

    def state_dict(self) -> dict:
        return {"k": self.k}

    def load_state_dict(self, state: dict) -> None:
        self.k = state["k"]


def test_mixed_batches_append_whole_text_windows_all_learned_chats_padded():
    text = BlockBatches(_blocks(), batch_size=3, seed=7, shift=True)
    same_text = BlockBatches(_blocks(), batch_size=3, seed=7, shift=True)
    mixed = MixedBatches(_Chats(), text)
    chats = _Chats()
    for _ in range(4):
        x, y = next(mixed)
        chat_x, chat_y = next(chats)
        text_x, text_y = next(same_text)
        width = chat_x.shape[1]
        assert x.shape == y.shape == (5, 8)  # the windows' width, whatever the chats'
        assert x[:2, :width].tolist() == chat_x.tolist()
        assert y[:2, :width].tolist() == chat_y.tolist()
        assert (x[:2, width:] == 0).all() and (y[:2, width:] == IGNORE_INDEX).all()
        # the text rows: the same windows as pretraining's, every target learned
        assert x[2:].tolist() == text_x.tolist() and y[2:].tolist() == text_y.tolist()
        assert (y[2:] != IGNORE_INDEX).all()


def test_mixed_batches_resume_both_positions():
    a = MixedBatches(_Chats(), BlockBatches(_blocks(), batch_size=3, seed=7, shift=True))
    for _ in range(9):  # past an epoch of the 22 shifted windows
        next(a)
    b = MixedBatches(_Chats(), BlockBatches(_blocks(), batch_size=3, seed=7, shift=True))
    b.load_state_dict(a.state_dict())
    for _ in range(5):
        (ax, ay), (bx, by) = next(a), next(b)
        assert torch.equal(ax, bx) and torch.equal(ay, by)
