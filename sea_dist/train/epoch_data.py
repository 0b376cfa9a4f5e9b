"""Per-epoch training triples: shuffled positives, fresh negatives, and each worker's share.

All workers derive the same epoch plan from (seed, epoch), so they agree on the number of
steps (DDP needs every rank to run the same count) without communicating. Global batch b is
``order[b*B:(b+1)*B]``; worker r trains on the r-th contiguous slice of it, so a world of W
workers sees exactly the batches one full-graph process sees, W slices at a time.
"""
from __future__ import annotations

import numpy as np

from sea_dist.arrays import sorted_unique


NEGATIVE_RULES = ("train_items", "all_items")


class NegativeSampler:
    """Uniform negatives, never an item of the user's training history.

    ``rule`` says which items may be drawn:

    - ``"train_items"`` (default, MMRec's rule): only items that occur in the training edges.
      MMRec's training loader samples from the unique item ids of the training split, so an
      item seen only in validation/test (or only in the feature files) is never pushed down
      as a negative; published numbers were produced this way.
    - ``"all_items"``: every item index ``0..n_items-1``, cold items included (this project's
      rule before it matched MMRec; it draws the same random stream as it did then).

    Rejection sampling against a sorted array of ``user * n_items + item`` keys: vectorised,
    and memory linear in the number of training edges (plus one index per candidate item).
    """

    def __init__(
        self,
        train_users: np.ndarray,
        train_items: np.ndarray,
        n_items: int,
        rule: str = "train_items",
        train_item_mask: np.ndarray | None = None,
    ):
        """``train_item_mask`` (``[n_items]`` bool): which items occur in training, when the
        edges given are not all of them (a partition holds its own users' edges only)."""
        if rule not in NEGATIVE_RULES:
            raise ValueError(f"negative rule must be one of {NEGATIVE_RULES}, got {rule!r}")
        self.rule = rule
        self.n_items = int(n_items)
        train_users = np.asarray(train_users, dtype=np.int64)
        train_items = np.asarray(train_items, dtype=np.int64)
        self.keys = sorted_unique(train_users * self.n_items + train_items)
        # None = every index; otherwise the sorted distinct items the draws index into
        self.candidates: np.ndarray | None = None
        if rule == "train_items":
            in_training = sorted_unique(train_items) if train_item_mask is None else np.flatnonzero(train_item_mask)
            self.candidates = in_training.astype(np.int64)
        history = np.bincount(self.keys // self.n_items) if len(self.keys) else np.zeros(0, np.int64)
        if len(history) and history.max() >= self.num_candidates:
            heavy = int(np.argmax(history))
            where = "every item" if rule == "all_items" else "every item that occurs in training"
            raise ValueError(
                f"user index {heavy} interacted with {where} ({self.num_candidates}): "
                "no negative item exists for it"
            )

    @property
    def num_candidates(self) -> int:
        """How many items a negative can be (before excluding the user's own history)."""
        return self.n_items if self.candidates is None else len(self.candidates)

    def _draw(self, size: int, rng: np.random.Generator) -> np.ndarray:
        if self.candidates is None:
            return rng.integers(0, self.n_items, size=size, dtype=np.int64)
        return self.candidates[rng.integers(0, len(self.candidates), size=size, dtype=np.int64)]

    def _is_positive(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        keys = users * self.n_items + items
        pos = np.searchsorted(self.keys, keys)
        pos = np.minimum(pos, len(self.keys) - 1)
        return self.keys[pos] == keys

    def sample(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        users = users.astype(np.int64)
        items = self._draw(len(users), rng)
        redo = np.flatnonzero(self._is_positive(users, items))
        while len(redo):
            items[redo] = self._draw(len(redo), rng)
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

    def loss_weight(self, step: int, rank: int, world_size: int) -> float:
        """What this worker's mean loss is multiplied by so that DDP's equal-weight average
        over workers is the mean over the whole global batch (``local * world / global``):
        every triple weighs the same, whichever worker's slice it is in."""
        start = step * self.batch_size
        stop = min(start + self.batch_size, len(self.users))
        bounds = np.linspace(start, stop, world_size + 1).astype(np.int64)
        return float(bounds[rank + 1] - bounds[rank]) * world_size / max(stop - start, 1)


class PartitionEpochPlan:
    """Partitioned mode: this worker's shuffled triples of one epoch, cut into the world's
    common step count.

    Holds the shuffle order and the negatives only; a step's users and positives are gathered
    from the training edges when asked for (two fewer edge-sized arrays per worker).
    """

    def __init__(
        self, users, items, negatives: NegativeSampler, steps: int, seed: int, epoch: int, rank: int,
        edges_per_rank: list[int],
    ):
        rng = np.random.default_rng([seed, epoch, rank])
        self.order = rng.permutation(len(users))
        self.train_users, self.train_items = users, items
        self.neg = negatives.sample(users[self.order], rng)
        self.bounds = np.linspace(0, len(users), steps + 1).astype(np.int64)
        self.steps = steps
        # every rank's batch size at every step (the same linspace cut of its edge count)
        self.global_batch = sum(
            np.diff(np.linspace(0, n, steps + 1).astype(np.int64)) for n in edges_per_rank
        )

    def num_steps(self, world_size: int = 1) -> int:
        return self.steps

    def local_batch(self, step: int, rank: int, world_size: int):
        lo, hi = self.bounds[step], self.bounds[step + 1]
        picked = self.order[lo:hi]
        return self.train_users[picked], self.train_items[picked], self.neg[lo:hi]

    def loss_weight(self, step: int, rank: int, world_size: int) -> float:
        """Batches are proportional to the partitions' edge counts, so workers' batches differ:
        scale the local mean loss by ``local * world / global`` and DDP's equal-weight average
        becomes the mean over the global batch (every triple weighs the same)."""
        local = int(self.bounds[step + 1] - self.bounds[step])
        return local * world_size / max(int(self.global_batch[step]), 1)
