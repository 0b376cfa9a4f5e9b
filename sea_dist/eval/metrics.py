"""Top-K ranking metrics with MMRec's definitions.

The published SEA numbers were produced by MMRec's evaluator, so we reproduce its exact
definitions (not, e.g., the scikit-learn or RecBole variants) to keep our numbers comparable:

* hit vector over the top-K ranked items (1 when the item is in the user's relevant set);
* ``Recall@K    = hits in top K / |relevant|``;
* ``NDCG@K      = DCG / IDCG`` with ``DCG = sum over hit positions i (1-based) of 1/log2(i+1)``
  and ``IDCG = sum_{i=1}^{min(K, |relevant|)} 1/log2(i+1)`` (binary relevance);
* ``Precision@K = hits in top K / K``;
* ``MAP@K       = (1 / min(|relevant|, K)) * sum_{k=1}^{K} Precision@k * rel(k)``.

Metrics are computed per user (so a distributed evaluator can shard users and concatenate
the per-user arrays) and averaged over users by :func:`mean_metrics`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

#: Metric names in the order they appear in result dicts, per cut-off.
METRIC_NAMES: tuple[str, ...] = ("recall", "ndcg", "precision", "map")


def _hit_matrix(topk_items: np.ndarray, relevant: list[np.ndarray]) -> np.ndarray:
    """Boolean ``[n_users, width]``: is ``topk_items[u, j]`` in ``relevant[u]``?

    Vectorised by encoding (user, item) pairs as one int64 key and using ``np.isin``, which
    sorts once instead of looping over users in Python (tens of thousands of users per eval).
    Negative item ids (padding from :func:`sea_dist.eval.ranking.rank_topk`) never hit.
    """
    n_users, width = topk_items.shape
    lens = np.fromiter((len(r) for r in relevant), dtype=np.int64, count=n_users)
    rel_items = (
        np.concatenate([np.asarray(r, dtype=np.int64).ravel() for r in relevant])
        if n_users
        else np.zeros(0, dtype=np.int64)
    )
    if rel_items.size and rel_items.min() < 0:
        raise ValueError("relevant item ids must be non-negative")
    span = int(max(rel_items.max(initial=-1), topk_items.max(initial=-1))) + 2
    rel_users = np.repeat(np.arange(n_users, dtype=np.int64), lens)
    rel_keys = rel_users * span + rel_items
    # Padding (-1) maps to item id span-1, which no relevant item can have.
    items = np.where(topk_items < 0, span - 1, topk_items).astype(np.int64, copy=False)
    cand_keys = np.arange(n_users, dtype=np.int64)[:, None] * span + items
    return np.isin(cand_keys, rel_keys)


def topk_metrics(
    topk_items: np.ndarray, relevant: list[np.ndarray], ks: Sequence[int]
) -> dict[str, np.ndarray]:
    """Per-user Recall/NDCG/Precision/MAP at every cut-off in ``ks``.

    Args:
        topk_items: int ``[n_users, >= max(ks)]``, each row ranked best first. Entries < 0
            are padding (fewer rankable items than K) and count as misses.
        relevant: one array of relevant (ground-truth) item ids per row; must be non-empty,
            because MMRec drops users without ground truth before evaluating and a recall
            over an empty set is undefined. Duplicates are ignored.
        ks: cut-offs, e.g. ``[10, 20]``.

    Returns:
        ``{"recall@K": float64[n_users], "ndcg@K": ..., "precision@K": ..., "map@K": ...}``
        for every K in ``ks``.
    """
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be a non-empty list of positive ints, got {ks!r}")
    topk_items = np.asarray(topk_items)
    if topk_items.ndim != 2:
        raise ValueError(f"topk_items must be 2-D, got shape {topk_items.shape}")
    n_users, width = topk_items.shape
    max_k = max(ks)
    if width < max_k:
        raise ValueError(f"topk_items has {width} columns, fewer than max(ks)={max_k}")
    if len(relevant) != n_users:
        raise ValueError(f"{len(relevant)} relevant sets for {n_users} ranked users")

    relevant = [np.unique(np.asarray(r, dtype=np.int64)) for r in relevant]
    pos_len = np.fromiter((len(r) for r in relevant), dtype=np.int64, count=n_users)
    if n_users and pos_len.min() == 0:
        raise ValueError("every evaluated user needs at least one relevant item")

    hits = _hit_matrix(topk_items[:, :max_k], relevant).astype(np.float64)
    ranks = np.arange(1, max_k + 1, dtype=np.float64)
    discount = 1.0 / np.log2(ranks + 1.0)
    ideal = np.cumsum(discount)  # ideal[j] = IDCG with j+1 relevant items in the top
    cum_hits = np.cumsum(hits, axis=1)
    # sum_{k' <= k} Precision@k' * rel(k'), for every k (MAP numerator).
    ap_num = np.cumsum(cum_hits / ranks * hits, axis=1)
    dcg = np.cumsum(hits * discount, axis=1)

    out: dict[str, np.ndarray] = {}
    for k in ks:
        n_hit = cum_hits[:, k - 1]
        denom = np.maximum(np.minimum(pos_len, k), 1)  # min(K, |relevant|); >= 1 checked above
        out[f"recall@{k}"] = n_hit / np.maximum(pos_len, 1)
        out[f"ndcg@{k}"] = dcg[:, k - 1] / ideal[denom - 1]
        out[f"precision@{k}"] = n_hit / k
        out[f"map@{k}"] = ap_num[:, k - 1] / denom
    return out


def mean_metrics(per_user: dict[str, np.ndarray]) -> dict[str, float]:
    """Average each per-user metric over users (MMRec reports the unweighted user mean).

    An empty array (no evaluated users, e.g. an empty shard) gives NaN rather than a
    warning-laden ``np.mean([])``, so callers can tell "nothing evaluated" from a zero score.
    """
    return {
        name: (float(np.mean(values)) if len(values) else float("nan"))
        for name, values in per_user.items()
    }
