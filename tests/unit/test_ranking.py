"""Full ranking with masking (sea_dist.eval.ranking), checked against hand-computed numbers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sea_dist.eval.metrics import mean_metrics
from sea_dist.eval.ranking import (
    EvalSplit,
    build_eval_split,
    build_mask_csr,
    evaluate,
    popularity_embeddings,
    popularity_scores,
    rank_topk,
    shard_slice,
)

L2 = 1.0 / math.log2(3)
L3 = 1.0 / math.log2(4)

# Scores for users 0..2 over items 0..5 (item_emb = identity, so scores = user_emb).
SCORES = np.array(
    [
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        [0.5, 0.1, 0.9, 0.3, 0.8, 0.2],
        [0.0, 1.0, 0.0, 0.0, 0.0, 0.0],  # user 3: no training interaction -> dropped
        [1.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # user 4: training only, no ground truth
    ]
)
TRAIN_U = np.array([0, 1, 1, 2, 4])
TRAIN_I = np.array([0, 5, 4, 1, 2])
TEST_U = np.array([0, 0, 1, 2, 2, 2, 3])
TEST_I = np.array([2, 5, 3, 0, 4, 5, 1])


def _setup() -> tuple[torch.Tensor, torch.Tensor, EvalSplit, np.ndarray, np.ndarray]:
    user_emb = torch.tensor(SCORES, dtype=torch.float32)
    item_emb = torch.eye(6, dtype=torch.float32)
    split = build_eval_split(5, TRAIN_U, TRAIN_I, TEST_U, TEST_I)
    mask_indptr, mask_items = build_mask_csr(5, [TRAIN_U], [TRAIN_I])
    return user_emb, item_emb, split, mask_indptr, mask_items


def test_build_eval_split_drops_users_without_training() -> None:
    split = build_eval_split(5, TRAIN_U, TRAIN_I, TEST_U, TEST_I)
    assert split.users.tolist() == [0, 1, 2]  # 3 has no train, 4 has no ground truth
    assert split.users.dtype == np.int64
    assert split.relevant_indptr.tolist() == [0, 2, 3, 6]
    assert [r.tolist() for r in split.relevant()] == [[2, 5], [3], [0, 4, 5]]
    assert len(split) == 3


def test_build_eval_split_deduplicates() -> None:
    split = build_eval_split(2, np.array([0, 1]), np.array([0, 0]), np.array([1, 1, 1]),
                             np.array([3, 3, 2]))
    assert split.users.tolist() == [1]
    assert split.relevant_items.tolist() == [2, 3]


def test_build_mask_csr() -> None:
    indptr, items = build_mask_csr(
        4, [np.array([2, 0, 2]), np.array([2, 0])], [np.array([5, 1, 3]), np.array([5, 4])]
    )
    assert indptr.tolist() == [0, 2, 2, 4, 4]
    assert items.tolist() == [1, 4, 3, 5]  # (2, 5) given twice, kept once
    with pytest.raises(ValueError):
        build_mask_csr(2, [np.array([2])], [np.array([0])])


def test_rank_topk_masks_training_items() -> None:
    user_emb, item_emb, split, mask_indptr, mask_items = _setup()
    topk = rank_topk(user_emb, item_emb, np.arange(5), mask_indptr, mask_items, k=3)
    assert topk.dtype == np.int64
    assert topk[:3].tolist() == [[1, 2, 3], [3, 2, 1], [2, 4, 0]]
    assert topk[3, 0] == 1 and topk[4, 0] == 0  # the rest of those rows are ties
    for u in range(5):
        masked = set(mask_items[mask_indptr[u] : mask_indptr[u + 1]].tolist())
        assert not masked & set(topk[u].tolist())
    # Without the mask, the top item of user 0 is its training item 0.
    empty_indptr = np.zeros(6, dtype=np.int64)
    raw = rank_topk(user_emb, item_emb, np.array([0]), empty_indptr, np.zeros(0, np.int64), 1)
    assert raw.tolist() == [[0]]


def test_rank_topk_pads_when_too_few_unmasked_items() -> None:
    user_emb = torch.ones(1, 2)
    item_emb = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    indptr, items = build_mask_csr(1, [np.array([0, 0])], [np.array([1, 2])])
    topk = rank_topk(user_emb, item_emb, np.array([0]), indptr, items, k=5)
    assert topk.tolist() == [[0, -1, -1, -1, -1]]


def test_evaluate_hand_computed() -> None:
    user_emb, item_emb, split, mask_indptr, mask_items = _setup()
    m = evaluate(user_emb, item_emb, split, mask_indptr, mask_items, ks=[2, 3], batch_size=2)
    # user 0: ranking (item 0 masked) 1, 2, 3, ...; relevant {2, 5}; hits [0, 1, 0]
    #   @2: R = 1/2, P = 1/2, NDCG = L2 / (1 + L2), MAP = (P@2 * 1) / min(2, 2) = 1/4
    #   @3: R = 1/2, P = 1/3, NDCG = L2 / (1 + L2) (IDCG over min(3, 2) = 2), MAP = 1/4
    # user 1: ranking (items 5, 4 masked) 3, 2, 1, ...; relevant {3}; hits [1, 0, 0]
    #   @2: R = 1, P = 1/2, NDCG = 1, MAP = 1;   @3: R = 1, P = 1/3, NDCG = 1, MAP = 1
    # user 2: ranking (item 1 masked) 2, 4, 0, 3, 5; relevant {0, 4, 5}; hits [0, 1, 1]
    #   @2: R = 1/3, P = 1/2, NDCG = L2 / (1 + L2), MAP = (1/2) / 2 = 1/4
    #   @3: R = 2/3, P = 2/3, NDCG = (L2 + L3) / (1 + L2 + L3), MAP = (1/2 + 2/3) / 3 = 7/18
    assert m["recall@2"] == pytest.approx([1 / 2, 1.0, 1 / 3])
    assert m["recall@3"] == pytest.approx([1 / 2, 1.0, 2 / 3])
    assert m["precision@2"] == pytest.approx([1 / 2, 1 / 2, 1 / 2])
    assert m["precision@3"] == pytest.approx([1 / 3, 1 / 3, 2 / 3])
    assert m["ndcg@2"] == pytest.approx([L2 / (1 + L2), 1.0, L2 / (1 + L2)])
    assert m["ndcg@3"] == pytest.approx([L2 / (1 + L2), 1.0, (L2 + L3) / (1 + L2 + L3)])
    assert m["map@2"] == pytest.approx([1 / 4, 1.0, 1 / 4])
    assert m["map@3"] == pytest.approx([1 / 4, 1.0, 7 / 18])
    means = mean_metrics(m)
    assert means["recall@2"] == pytest.approx((1 / 2 + 1 + 1 / 3) / 3)
    assert means["map@3"] == pytest.approx((1 / 4 + 1 + 7 / 18) / 3)


def test_mask_valid_items_too() -> None:
    user_emb, item_emb, split, _, _ = _setup()
    # Also masking a "validation" item 2 for user 2 moves items 4, 0, 3 up.
    indptr, items = build_mask_csr(5, [TRAIN_U, np.array([2])], [TRAIN_I, np.array([2])])
    topk = rank_topk(user_emb, item_emb, np.array([2]), indptr, items, k=3)
    assert topk.tolist() == [[4, 0, 3]]


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_evaluation_matches_single(world: int) -> None:
    rng = np.random.default_rng(0)
    n_users, n_items, dim = 37, 50, 8
    tr_u = rng.integers(0, n_users, 300)
    tr_i = rng.integers(0, n_items, 300)
    te_u = rng.integers(0, n_users, 120)
    te_i = rng.integers(0, n_items, 120)
    split = build_eval_split(n_users, tr_u, tr_i, te_u, te_i)
    indptr, items = build_mask_csr(n_users, [tr_u], [tr_i])
    user_emb = torch.from_numpy(rng.standard_normal((n_users, dim)).astype(np.float32))
    item_emb = torch.from_numpy(rng.standard_normal((n_items, dim)).astype(np.float32))
    ks = [5, 10]
    full = evaluate(user_emb, item_emb, split, indptr, items, ks, batch_size=7)
    parts = [
        evaluate(user_emb, item_emb, split, indptr, items, ks, batch_size=4,
                 user_slice=shard_slice(len(split.users), r, world))
        for r in range(world)
    ]
    for name, values in full.items():
        assert np.array_equal(np.concatenate([p[name] for p in parts]), values), name


def test_shard_slice_tiles_range() -> None:
    for n in range(0, 12):
        for world in range(1, 6):
            covered = []
            sizes = []
            for r in range(world):
                s = shard_slice(n, r, world)
                covered.extend(range(n)[s])
                sizes.append(s.stop - s.start)
            assert covered == list(range(n))
            assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError):
        shard_slice(5, 2, 2)


def test_popularity_baseline() -> None:
    pop = popularity_scores(4, np.array([1, 1, 3, 1, 3, 0]))
    assert pop.tolist() == [1.0, 3.0, 0.0, 2.0]
    user_emb, item_emb = popularity_embeddings(2, 4, np.array([1, 1, 3, 1, 3, 0]))
    indptr, items = build_mask_csr(2, [np.array([0, 0, 1])], [np.array([1, 3, 0])])
    topk = rank_topk(user_emb, item_emb, np.array([0, 1]), indptr, items, k=2)
    # user 0: items 1, 3 masked -> 0 (degree 1), 2 (degree 0); user 1: item 0 masked -> 1, 3
    assert topk.tolist() == [[0, 2], [1, 3]]
