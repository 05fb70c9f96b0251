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
