"""Hand-computed checks of the MMRec metric definitions in sea_dist.eval.metrics."""
from __future__ import annotations

import math

import numpy as np
import pytest

from sea_dist.eval.metrics import mean_metrics, topk_metrics

L2 = 1.0 / math.log2(3)  # discount at rank 2
L3 = 1.0 / math.log2(4)  # discount at rank 3 (= 0.5)


def test_hand_computed_two_users() -> None:
    topk = np.array([[4, 1, 7], [2, 3, 5]], dtype=np.int64)
    relevant = [np.array([1, 7, 9]), np.array([2])]
    m = topk_metrics(topk, relevant, [1, 2, 3])
    # user 0: hits [0, 1, 1], |rel| = 3
    #   @1: recall 0, precision 0, ndcg 0, map 0
    #   @2: recall 1/3, precision 1/2, DCG = L2, IDCG = 1 + L2, MAP = (P@2)/2 = 1/4
    #   @3: recall 2/3, precision 2/3, DCG = L2 + L3, IDCG = 1 + L2 + L3,
    #       MAP = (1/2 + 2/3) / 3 = 7/18
    # user 1: hits [1, 0, 0], |rel| = 1
    #   @k: recall 1, precision 1/k, ndcg 1, map = P@1 / 1 = 1
    assert m["recall@1"] == pytest.approx([0.0, 1.0])
    assert m["recall@2"] == pytest.approx([1 / 3, 1.0])
    assert m["recall@3"] == pytest.approx([2 / 3, 1.0])
    assert m["precision@1"] == pytest.approx([0.0, 1.0])
    assert m["precision@2"] == pytest.approx([0.5, 0.5])
    assert m["precision@3"] == pytest.approx([2 / 3, 1 / 3])
    assert m["ndcg@1"] == pytest.approx([0.0, 1.0])
    assert m["ndcg@2"] == pytest.approx([L2 / (1 + L2), 1.0])
    assert m["ndcg@3"] == pytest.approx([(L2 + L3) / (1 + L2 + L3), 1.0])
    assert m["map@1"] == pytest.approx([0.0, 1.0])
    assert m["map@2"] == pytest.approx([0.25, 1.0])
    assert m["map@3"] == pytest.approx([7 / 18, 1.0])
    assert set(m) == {f"{n}@{k}" for n in ("recall", "ndcg", "precision", "map") for k in (1, 2, 3)}


def test_map_and_idcg_cap_at_k_when_many_relevant() -> None:
    # 5 relevant items, K = 2, both ranked items hit: MAP = (1 + 1) / min(5, 2) = 1,
    # NDCG = (1 + L2) / (1 + L2) = 1 (IDCG over min(K, |rel|) = 2 items), recall = 2/5.
    m = topk_metrics(np.array([[0, 1]]), [np.arange(5)], [2])
    assert m["map@2"] == pytest.approx([1.0])
    assert m["ndcg@2"] == pytest.approx([1.0])
    assert m["recall@2"] == pytest.approx([0.4])
    assert m["precision@2"] == pytest.approx([1.0])


def test_padding_never_hits_and_duplicates_count_once() -> None:
    # -1 is padding from rank_topk; relevant has a duplicate 3 -> |rel| = 2.
    m = topk_metrics(np.array([[3, -1, -1]]), [np.array([3, 3, 0])], [3])
    assert m["recall@3"] == pytest.approx([0.5])
    assert m["precision@3"] == pytest.approx([1 / 3])
    assert m["ndcg@3"] == pytest.approx([1 / (1 + L2)])
    assert m["map@3"] == pytest.approx([0.5])


def test_extra_columns_are_ignored() -> None:
    topk = np.array([[5, 6, 7, 8]])
    a = topk_metrics(topk, [np.array([8])], [3])
    assert a["recall@3"] == pytest.approx([0.0])


def test_errors() -> None:
    with pytest.raises(ValueError, match="relevant"):
        topk_metrics(np.array([[0, 1]]), [np.array([], dtype=np.int64)], [2])
    with pytest.raises(ValueError, match="columns"):
        topk_metrics(np.array([[0, 1]]), [np.array([1])], [3])
    with pytest.raises(ValueError):
        topk_metrics(np.array([[0, 1]]), [np.array([1])], [])


def test_mean_metrics() -> None:
    means = mean_metrics({"recall@2": np.array([0.0, 0.5, 1.0]), "ndcg@2": np.zeros(0)})
    assert means["recall@2"] == pytest.approx(0.5)
    assert isinstance(means["recall@2"], float)
    assert math.isnan(means["ndcg@2"])


def test_empty_user_set() -> None:
    m = topk_metrics(np.zeros((0, 3), dtype=np.int64), [], [2, 3])
    assert all(v.shape == (0,) for v in m.values())
