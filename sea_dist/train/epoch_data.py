"""Per-epoch training triples: shuffled positives, fresh negatives, and each worker's share.

All workers derive the same epoch plan from (seed, epoch), so they agree on the number of
steps (DDP needs every rank to run the same count) without communicating. Global batch b is
``order[b*B:(b+1)*B]``; worker r trains on the r-th contiguous slice of it, so a world of W
workers sees exactly the batches one full-graph process sees, W slices at a time.
"""
from __future__ import annotations

import numpy as np

from sea_dist.arrays import sorted_unique


class NegativeSampler:
    """Uniform negatives over the items *not* in the user's training history (MMRec).

    Rejection sampling against a sorted array of ``user * n_items + item`` keys: vectorised,
    and memory linear in the number of training edges.
    """

    def __init__(self, train_users: np.ndarray, train_items: np.ndarray, n_items: int):
        self.n_items = int(n_items)
        self.keys = sorted_unique(train_users.astype(np.int64) * self.n_items + train_items)
        degree = np.bincount(train_users, minlength=int(train_users.max()) + 1 if len(train_users) else 0)
        if len(degree) and degree.max() >= self.n_items:
            heavy = int(np.argmax(degree))
            raise ValueError(
                f"user index {heavy} interacted with every item in training: "
                "no negative item exists for it"
            )

    def _is_positive(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        keys = users * self.n_items + items
        pos = np.searchsorted(self.keys, keys)
        pos = np.minimum(pos, len(self.keys) - 1)
        return self.keys[pos] == keys

    def sample(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        users = users.astype(np.int64)
        items = rng.integers(0, self.n_items, size=len(users), dtype=np.int64)
        redo = np.flatnonzero(self._is_positive(users, items))
        while len(redo):
            items[redo] = rng.integers(0, self.n_items, size=len(redo), dtype=np.int64)
            redo = redo[self._is_positive(users[redo], items[redo])]
        return items


class EpochPlan:
    """The shuffled (user, pos, neg) triples of one epoch and how they split into steps."""

    def __init__(
        self,
        train_users: np.ndarray,
        train_items: np.ndarray,
        negatives: NegativeSampler,
        batch_size: int,
        seed: int,
        epoch: int,
    ):
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(train_users))
        self.users = train_users[order]
        self.pos = train_items[order]
        self.neg = negatives.sample(self.users, rng)
        self.batch_size = batch_size

    def num_steps(self, world_size: int = 1) -> int:
        """Full batches, plus the final partial one when every worker gets a triple of it."""
        full, rest = divmod(len(self.users), self.batch_size)
        return full + (1 if rest >= world_size else 0)

    def local_batch(self, step: int, rank: int, world_size: int) -> tuple[np.ndarray, ...]:
        start = step * self.batch_size
        stop = min(start + self.batch_size, len(self.users))
        bounds = np.linspace(start, stop, world_size + 1).astype(np.int64)
        lo, hi = bounds[rank], bounds[rank + 1]
        return self.users[lo:hi], self.pos[lo:hi], self.neg[lo:hi]
