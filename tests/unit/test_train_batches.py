"""Length-bucketed batches of the intent training loop (models/train.py)."""
import random

import numpy as np

from models.train import length_bucketed


def test_every_example_once_in_batches_of_similar_length_in_random_order():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 60, 1000).tolist()
    order = list(range(1000))
    random.Random(1).shuffle(order)
    batches = length_bucketed(order, lengths, 32, random.Random(2), window=10)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert sorted(len(b) for b in batches) == [8] + [32] * 31  # 1000 = 31 x 32 + 8
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    unsorted = sum(max(lengths[i] for i in order[s:s + 32]) * len(order[s:s + 32]) for s in range(0, 1000, 32))
    assert padded < 0.7 * unsorted  # far less padding than plain shuffled batches
    first = [max(lengths[i] for i in b) for b in batches[:10]]
    assert first != sorted(first)  # batches are not served shortest first
    assert batches != length_bucketed(order, lengths, 32, random.Random(3), window=10)
