"""Ranking items that have no training interactions (new arrivals).

SEA has no item id embeddings: an item's representation comes from its features (and its kNN
neighbours), so an item never seen in training can be ranked. Popularity cannot: every new item
has degree 0. This measures SEA on exactly those items: for each user with held-out
interactions on cold items, rank the cold items (the "new arrivals" shelf) and take Recall@K.
A random ranking has expected Recall@K = K / |cold items|.
"""
from __future__ import annotations

import numpy as np
import torch


def cold_item_recall(
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    cold_items: np.ndarray,
    eval_users: np.ndarray,
    eval_items: np.ndarray,
    k: int = 20,
) -> dict[str, float]:
    """Recall@k over the cold items for the (user, item) pairs whose item is cold."""
    cold_items = np.unique(np.asarray(cold_items, dtype=np.int64))
    if len(cold_items) <= k:
        raise ValueError(f"need more than k={k} cold items to rank, got {len(cold_items)}")
    is_cold = np.isin(eval_items, cold_items)
    users, items = eval_users[is_cold], eval_items[is_cold]
    if not len(users):
        raise ValueError("no held-out interaction touches a cold item")
    position = {int(item): i for i, item in enumerate(cold_items)}
    scores = user_emb[torch.from_numpy(np.unique(users))] @ item_emb[torch.from_numpy(cold_items)].T
    top = torch.topk(scores, k, dim=1).indices.numpy()
    row_of = {int(u): r for r, u in enumerate(np.unique(users))}
    recalls = []
    for user in np.unique(users):
        relevant = {position[int(i)] for i in items[users == user]}
        hits = len(relevant.intersection(top[row_of[int(user)]].tolist()))
        recalls.append(hits / len(relevant))
    return {
        f"recall@{k}": float(np.mean(recalls)),
        f"random_recall@{k}": k / len(cold_items),
        "users": int(len(recalls)),
        "cold_items": int(len(cold_items)),
    }
