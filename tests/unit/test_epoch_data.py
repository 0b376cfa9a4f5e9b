import numpy as np
import pytest

from sea_dist.train.epoch_data import EpochPlan, NegativeSampler


def _edges():
    users = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3], dtype=np.int64)
    items = np.array([0, 1, 2, 0, 3, 4, 1, 2, 3, 4], dtype=np.int64)
    return users, items


def _history_and_counts(sampler, users, items, user, n_items):
    rng = np.random.default_rng(0)
    queries = np.repeat(np.arange(4), 600)
    negatives = sampler.sample(queries, rng)
    history = {(u, i) for u, i in zip(users, items)}
    assert not any((u, i) in history for u, i in zip(queries, negatives))
    return np.bincount(negatives[queries == user], minlength=n_items)


def test_default_rule_draws_only_items_seen_in_training():
    # items 0..4 occur in training, item 5 does not (a cold item): MMRec never draws it
    users, items = _edges()
    sampler = NegativeSampler(users, items, 6)  # the positional form callers use
    assert sampler.rule == "train_items" and sampler.num_candidates == 5
    counts = _history_and_counts(sampler, users, items, user=0, n_items=6)
    # user 0 has 0, 1, 2: its negatives are 3 or 4, each about 1/2 of 600
    assert counts[[0, 1, 2, 5]].sum() == 0
    assert 240 < counts[3] < 360 and 240 < counts[4] < 360
    # user 3 has 1..4 of the five training items: item 0 every time
    assert _history_and_counts(sampler, users, items, user=3, n_items=6)[0] == 600


def test_all_items_rule_also_draws_cold_items():
    users, items = _edges()
    sampler = NegativeSampler(users, items, n_items=6, rule="all_items")
    assert sampler.num_candidates == 6
    counts = _history_and_counts(sampler, users, items, user=0, n_items=6)
    # user 0 may get items 3, 4, 5 only, each about 1/3 of the time
    assert counts[:3].sum() == 0 and counts[3:].min() > 150
    # user 3 gets items 0 and 5, the cold one included
    counts3 = _history_and_counts(sampler, users, items, user=3, n_items=6)
    assert counts3[[0, 5]].sum() == 600 and counts3[5] > 240


def test_rules_agree_draw_for_draw_when_every_item_is_trained():
    # no cold item: both rules must be the same sampler (same random stream), so the default
    # change cannot move results on data whose items all occur in training
    users, items = _edges()
    queries = np.repeat(np.arange(4), 50)
    a = NegativeSampler(users, items, 5, rule="train_items").sample(queries, np.random.default_rng(3))
    b = NegativeSampler(users, items, 5, rule="all_items").sample(queries, np.random.default_rng(3))
    assert np.array_equal(a, b)


def test_user_with_every_item_is_an_error():
    with pytest.raises(ValueError, match="every item"):
        NegativeSampler(np.array([0, 0]), np.array([0, 1]), n_items=2)
    with pytest.raises(ValueError, match="every item"):
        NegativeSampler(np.array([0, 0]), np.array([0, 1]), n_items=2, rule="all_items")


def test_user_with_every_training_item_needs_the_all_items_rule():
    # user 0 has both items that occur in training; item 2 exists but is cold
    users, items = np.array([0, 0, 1]), np.array([0, 1, 1])
    with pytest.raises(ValueError, match="every item that occurs in training"):
        NegativeSampler(users, items, n_items=3)
    sampler = NegativeSampler(users, items, n_items=3, rule="all_items")
    assert set(sampler.sample(np.zeros(20, dtype=np.int64), np.random.default_rng(0))) == {2}


def test_unknown_rule_is_rejected():
    users, items = _edges()
    with pytest.raises(ValueError, match="train_items"):
        NegativeSampler(users, items, 6, rule="popular_items")


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


def test_config_defaults_to_mmrecs_rule_and_rejects_others():
    from sea_dist.config import Config
    from sea_dist.config import ConfigError, apply_overrides, validate_config

    assert Config().train.negative_items == "train_items"
    assert apply_overrides(Config(), {"train.negative_items": "all_items"}).train.negative_items == "all_items"
    cfg = Config()
    cfg.train.negative_items = "everything"
    with pytest.raises(ConfigError, match="negative_items"):
        validate_config(cfg)


def test_train_item_mask_names_the_training_items_a_partition_does_not_hold():
    # a partition holds user 0's edges only (items 0, 1); items 0..3 occur in the whole
    # training split, item 4 nowhere: negatives come from 2, 3 (never the cold item 4)
    users, items = np.array([0, 0]), np.array([0, 1])
    mask = np.array([True, True, True, True, False])
    sampler = NegativeSampler(users, items, 5, train_item_mask=mask)
    assert sampler.num_candidates == 4
    negatives = sampler.sample(np.zeros(400, dtype=np.int64), np.random.default_rng(0))
    counts = np.bincount(negatives, minlength=5)
    assert counts[[0, 1, 4]].sum() == 0 and min(counts[2], counts[3]) > 150
