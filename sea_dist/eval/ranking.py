"""Full ranking over all items with masking, batched over users (MMRec protocol).

Every evaluated user is scored against *every* item (no sampled negatives), the user's
training items are masked to ``-inf`` (optionally validation items too, at test time), and
the top-K items feed :func:`sea_dist.eval.metrics.topk_metrics`. Users are processed in
batches so memory stays at ``batch_size x n_items`` scores, and :func:`evaluate` takes a
``user_slice`` so a distributed evaluator can shard users with :func:`shard_slice` and
concatenate the per-user arrays afterwards.

Ties: ``torch.topk`` decides the order among equal scores. Each row is ranked independently of
the other rows in its batch, so on a given device/build the result for a user does not depend
on batching or sharding; it is *not* guaranteed to prefer lower item ids, and may differ
between CPU and GPU. With real (float) embeddings exact ties are rare enough not to matter.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from sea_dist.eval.metrics import topk_metrics


@dataclass
class EvalSplit:
    """The users evaluated on one split (validation or test) and their ground truth.

    Attributes:
        users: int64, sorted: users with >= 1 relevant item in this split *and* >= 1 training
            interaction (MMRec drops users without training interactions: their embeddings
            are untrained, so ranking them only adds noise).
        relevant_indptr: int64 ``[len(users) + 1]``, CSR row pointers over ``users``.
        relevant_items: int64, the (deduplicated, sorted per user) relevant item ids.
    """

    users: np.ndarray
    relevant_indptr: np.ndarray
    relevant_items: np.ndarray

    def __len__(self) -> int:
        return int(len(self.users))

    def relevant(self, rows: slice | np.ndarray | None = None) -> list[np.ndarray]:
        """Relevant items of the users at positions ``rows`` (all users when ``None``)."""
        idx = np.arange(len(self.users))[rows if rows is not None else slice(None)]
        return [
            self.relevant_items[self.relevant_indptr[i] : self.relevant_indptr[i + 1]]
            for i in idx
        ]



#: upper bound on one ranking batch's score block (users x items), whatever ``batch_size`` says
MAX_SCORES_PER_BATCH = 64 * 1024 * 1024

def _as_int64(a: np.ndarray | Sequence[int], name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False).ravel()


def _csr_from_pairs(
    n_rows: int, rows: np.ndarray, cols: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """CSR (indptr, cols) of the *distinct* (row, col) pairs, cols sorted within a row."""
    if rows.shape != cols.shape:
        raise ValueError(f"pair arrays differ in length: {rows.shape} vs {cols.shape}")
    if rows.size and (rows.min() < 0 or rows.max() >= n_rows):
        raise ValueError(f"user ids must lie in [0, {n_rows})")
    if cols.size and cols.min() < 0:
        raise ValueError("item ids must be non-negative")
    if rows.size:
        order = np.lexsort((cols, rows))
        rows, cols = rows[order], cols[order]
        keep = np.ones(rows.size, dtype=bool)
        keep[1:] = (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1])
        rows, cols = rows[keep], cols[keep]
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
    return indptr, cols.astype(np.int64, copy=False)


def build_eval_split(
    n_users: int,
    train_users: np.ndarray,
    train_items: np.ndarray,
    eval_users: np.ndarray,
    eval_items: np.ndarray,
) -> EvalSplit:
    """Group a split's (user, item) interactions into an :class:`EvalSplit`.

    Users without any training interaction are dropped (MMRec convention), as are users with
    no interaction in the split. Duplicate (user, item) pairs count once, so Recall's
    denominator is the number of *distinct* relevant items.
    """
    train_users = _as_int64(train_users, "train_users")
    train_items = _as_int64(train_items, "train_items")
    if train_users.shape != train_items.shape:
        raise ValueError("train_users and train_items differ in length")
    eval_users = _as_int64(eval_users, "eval_users")
    eval_items = _as_int64(eval_items, "eval_items")
    if train_users.size and (train_users.min() < 0 or train_users.max() >= n_users):
        raise ValueError(f"train user ids must lie in [0, {n_users})")

    indptr_all, items = _csr_from_pairs(n_users, eval_users, eval_items)
    has_train = np.bincount(train_users, minlength=n_users) > 0
    counts = np.diff(indptr_all)
    users = np.flatnonzero((counts > 0) & has_train).astype(np.int64)
    lens = counts[users]
    starts = indptr_all[users]
    relevant_indptr = np.zeros(len(users) + 1, dtype=np.int64)
    np.cumsum(lens, out=relevant_indptr[1:])
    relevant_items = items[_gather_index(starts, lens)]
    return EvalSplit(users=users, relevant_indptr=relevant_indptr, relevant_items=relevant_items)


def _gather_index(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + l)`` for every (s, l), without a Python loop."""
    total = int(lens.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.cumsum(lens) - lens  # where each segment starts in the output
    return np.repeat(starts - offsets, lens) + np.arange(total, dtype=np.int64)


def build_mask_csr(
    n_users: int, users_arrays: list[np.ndarray], items_arrays: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """CSR over all ``n_users`` of the items to exclude from ranking.

    Pass the training interactions (MMRec), plus the validation interactions when testing
    with ``eval.mask_valid_at_test``: the arrays are concatenated and deduplicated.
    Returns ``(indptr int64[n_users + 1], items int64)``.
    """
    if len(users_arrays) != len(items_arrays):
        raise ValueError("users_arrays and items_arrays must have the same length")
    users = [_as_int64(u, "users") for u in users_arrays]
    items = [_as_int64(i, "items") for i in items_arrays]
    rows = np.concatenate(users) if users else np.zeros(0, dtype=np.int64)
    cols = np.concatenate(items) if items else np.zeros(0, dtype=np.int64)
    return _csr_from_pairs(n_users, rows, cols)


def rank_topk(
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    users: np.ndarray,
    mask_indptr: np.ndarray,
    mask_items: np.ndarray,
    k: int,
    batch_size: int = 4096,
) -> np.ndarray:
    """Top-``k`` items per user by ``user_emb[u] . item_emb[i]``, masked items excluded.

    Scores are computed on ``user_emb``'s device, ``batch_size`` users at a time (fewer when
    ``batch_size x n_items`` would exceed ``MAX_SCORES_PER_BATCH``, 64M scores = 256 MB of
    float32), so peak memory is that many scores. Masked (user, item) entries become ``-inf``.
    Slots that only a masked item could fill (fewer than ``k`` unmasked items, or ``k`` larger
    than the catalogue) are returned as ``-1`` so they can never count as hits.

    Returns:
        int64 ``[len(users), k]``, best first. See the module docstring for tie handling.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if user_emb.dim() != 2 or item_emb.dim() != 2 or user_emb.shape[1] != item_emb.shape[1]:
        raise ValueError(
            f"embeddings must be 2-D with equal width, got {tuple(user_emb.shape)} "
            f"and {tuple(item_emb.shape)}"
        )
    users = _as_int64(users, "users")
    mask_indptr = _as_int64(mask_indptr, "mask_indptr")
    mask_items = _as_int64(mask_items, "mask_items")
    n_items = int(item_emb.shape[0])
    device = user_emb.device
    item_emb = item_emb.to(device=device, dtype=user_emb.dtype)
    kk = min(k, n_items)
    # at catalog size a batch of users x every item is gigabytes: bound the score block too
    batch_size = max(1, min(batch_size, MAX_SCORES_PER_BATCH // max(n_items, 1)))
    out = np.full((len(users), k), -1, dtype=np.int64)
    if kk == 0 or len(users) == 0:
        return out

    with torch.no_grad():
        for start in range(0, len(users), batch_size):
            batch = users[start : start + batch_size]
            scores = user_emb[torch.from_numpy(batch).to(device)] @ item_emb.T
            starts = mask_indptr[batch]
            lens = mask_indptr[batch + 1] - starts
            if lens.sum():
                rows = np.repeat(np.arange(len(batch), dtype=np.int64), lens)
                cols = mask_items[_gather_index(starts, lens)]
                scores[torch.from_numpy(rows).to(device), torch.from_numpy(cols).to(device)] = (
                    float("-inf")
                )
            values, idx = torch.topk(scores, kk, dim=1, largest=True, sorted=True)
            idx = idx.masked_fill(values == float("-inf"), -1)
            out[start : start + len(batch), :kk] = idx.cpu().numpy()
    return out


def shard_slice(n: int, rank: int, world: int) -> slice:
    """Contiguous, balanced share of ``range(n)`` for worker ``rank`` of ``world``.

    Shard sizes differ by at most one (the first ``n % world`` ranks take one extra), and the
    shards in rank order tile ``0..n`` exactly, so concatenating per-shard results in rank
    order reproduces the single-process order.
    """
    if world < 1:
        raise ValueError(f"world must be >= 1, got {world}")
    if not 0 <= rank < world:
        raise ValueError(f"rank must lie in [0, {world}), got {rank}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def evaluate(
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    split: EvalSplit,
    mask_indptr: np.ndarray,
    mask_items: np.ndarray,
    ks: Sequence[int],
    batch_size: int = 4096,
    user_slice: slice | None = None,
) -> dict[str, np.ndarray]:
    """Per-user metrics for ``split.users[user_slice]`` (all users when ``None``).

    ``user_emb`` is indexed by global user id and ``item_emb`` by item id; average the
    result with :func:`sea_dist.eval.metrics.mean_metrics` (after concatenating shards).
    """
    ks = [int(k) for k in ks]
    if not ks:
        raise ValueError("ks must not be empty")
    rows = np.arange(len(split.users))[user_slice if user_slice is not None else slice(None)]
    users = split.users[rows]
    topk = rank_topk(user_emb, item_emb, users, mask_indptr, mask_items, max(ks), batch_size)
    return topk_metrics(topk, split.relevant(rows), ks)


def popularity_scores(n_items: int, train_items: np.ndarray) -> torch.Tensor:
    """Training degree of every item (float64 ``[n_items]``), the popularity baseline's score.

    float64 so counts stay exact however large the data. Rank users with it through
    :func:`popularity_embeddings` so the baseline goes through the same masking and metrics.
    """
    items = _as_int64(train_items, "train_items")
    if items.size and (items.min() < 0 or items.max() >= n_items):
        raise ValueError(f"train item ids must lie in [0, {n_items})")
    return torch.from_numpy(np.bincount(items, minlength=n_items).astype(np.float64))


def popularity_embeddings(
    n_users: int, n_items: int, train_items: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(user_emb, item_emb)`` whose dot products are the item popularity for every user.

    Lets the popularity baseline reuse :func:`evaluate` unchanged (width-1 embeddings: every
    user is all ones, every item its training degree).
    """
    user_emb = torch.ones((n_users, 1), dtype=torch.float64)
    item_emb = popularity_scores(n_items, train_items).unsqueeze(1)
    return user_emb, item_emb
