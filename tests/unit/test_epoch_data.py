import numpy as np
import pytest

from sea_dist.train.epoch_data import EpochPlan, NegativeSampler


def _edges():
    users = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3], dtype=np.int64)
    items = np.array([0, 1, 2, 0, 3, 4, 1, 2, 3, 4], dtype=np.int64)
    return users, items


def test_negatives_are_never_training_items():
    users, items = _edges()
    sampler = NegativeSampler(users, items, n_items=6)
    rng = np.random.default_rng(0)
    queries = np.repeat(np.arange(4), 500)
    negatives = sampler.sample(queries, rng)
    history = {(u, i) for u, i in zip(users, items)}
    assert not any((u, i) in history for u, i in zip(queries, negatives))
    # uniform over the rest: user 0 may get items 3, 4, 5 only, each about 1/3 of the time
    counts = np.bincount(negatives[queries == 0], minlength=6)
    assert counts[:3].sum() == 0 and counts[3:].min() > 120


def test_user_with_every_item_is_an_error():
    with pytest.raises(ValueError, match="every item"):
        NegativeSampler(np.array([0, 0]), np.array([0, 1]), n_items=2)


def test_worker_slices_tile_each_global_batch():
    users, items = _edges()
    plan = EpochPlan(users, items, NegativeSampler(users, items, 6), batch_size=4, seed=1, epoch=0)
    assert plan.num_steps(1) == 3  # 4 + 4 + 2
    assert plan.num_steps(3) == 2  # a final batch of 2 cannot feed 3 workers: dropped
    for step in range(plan.num_steps(2)):
        whole = plan.local_batch(step, 0, 1)
        halves = [plan.local_batch(step, r, 2) for r in range(2)]
        for column in range(3):
            assert np.array_equal(np.concatenate([h[column] for h in halves]), whole[column])
    again = EpochPlan(users, items, NegativeSampler(users, items, 6), batch_size=4, seed=1, epoch=0)
    assert np.array_equal(again.neg, plan.neg)  # a resumed epoch replays the same triples
    other = EpochPlan(users, items, NegativeSampler(users, items, 6), batch_size=4, seed=1, epoch=1)
    assert not np.array_equal(other.users, plan.users)
