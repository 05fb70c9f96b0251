"""Batch order: each epoch visits every example once, in the seeded order, across batches."""

import numpy as np

from xinslm.data import ShuffledIndices


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


def test_prefetcher_yields_the_plain_batches_in_order_with_the_consumed_position():
    import torch

    from xinslm.data import BlockBatches, Prefetcher

    plain = BlockBatches(_blocks(), batch_size=4, seed=3)
    ahead = Prefetcher(BlockBatches(_blocks(), batch_size=4, seed=3), torch.device("cpu"))
    try:
        for _ in range(12):  # two epochs and more
            x, y = next(ahead)
            px, py = next(plain)
            assert torch.equal(x, px) and torch.equal(y, py)
            # The position is that of the batches handed out, though more were made ahead.
            assert ahead.state_dict() == plain.state_dict()
    finally:
        ahead.close()


def test_prefetcher_raises_the_error_of_its_source():
    import pytest
    import torch

    from xinslm.data import Prefetcher

    class Broken:
        def state_dict(self):
            return {}

        def __next__(self):
            raise ValueError("bad batch")

    ahead = Prefetcher(Broken(), torch.device("cpu"))
    with pytest.raises(ValueError, match="bad batch"):
        next(ahead)
    ahead.close()
