"""Validation/test evaluation of a trained SEA, users sharded across workers.

Each worker ranks a contiguous shard of the evaluated users; per-user metrics are gathered in
rank order and averaged once, so the result is bit-identical to a single-process evaluation
(the mean is taken over the same array in the same order).
"""
from __future__ import annotations

import numpy as np
import torch

from sea_dist.config import EvalConfig
from sea_dist.eval.metrics import mean_metrics
from sea_dist.eval.ranking import (
    EvalSplit,
    build_eval_split,
    build_mask_csr,
    evaluate,
    popularity_embeddings,
    shard_slice,
)
from sea_dist.runtime.distributed import WorkerContext

SPLIT_IDS = {"train": 0, "valid": 1, "test": 2}


class Evaluator:
    def __init__(
        self,
        n_users: int,
        n_items: int,
        edges: dict[str, tuple[np.ndarray, np.ndarray]],
        cfg: EvalConfig,
        ctx: WorkerContext | None = None,
        users_sharded: bool = False,
        popularity_counts: np.ndarray | None = None,
    ):
        """``edges[split] = (users, items)`` for "train", "valid" and "test".

        ``users_sharded``: every worker was given only its own users (partitioned mode) and
        evaluates all of them, instead of a slice of a shared user set; the per-user results
        are gathered in rank order either way. ``popularity_counts``: the items' training
        degrees over the whole graph, where ``edges["train"]`` holds only this worker's.
        """
        self.users_sharded = users_sharded
        self.popularity_counts = popularity_counts
        self.cfg = cfg
        self.ctx = ctx or WorkerContext()
        self.n_users, self.n_items = n_users, n_items
        train_u, train_i = edges["train"]
        self.train_items = train_i
        self.splits: dict[str, EvalSplit] = {
            name: build_eval_split(n_users, train_u, train_i, *edges[name])
            for name in ("valid", "test")
        }
        # Users with held-out interactions but none in training are skipped (MMRec's rule:
        # nothing to propagate from); counted so the skip is visible, not silent.
        self.skipped_users = {
            name: int(len(np.unique(edges[name][0])) - len(self.splits[name])) for name in ("valid", "test")
        }
        train_mask = build_mask_csr(n_users, [train_u], [train_i])
        test_mask = train_mask
        if cfg.mask_valid_at_test:
            valid_u, valid_i = edges["valid"]
            test_mask = build_mask_csr(n_users, [train_u, valid_u], [train_i, valid_i])
        self.masks = {"valid": train_mask, "test": test_mask}

    def num_users(self, split: str) -> int:
        return len(self.splits[split])

    def evaluate(self, user_emb: torch.Tensor, item_emb: torch.Tensor, split: str) -> dict[str, float]:
        evaluated = self.splits[split]
        shard = (
            slice(0, len(evaluated))
            if self.users_sharded
            else shard_slice(len(evaluated), self.ctx.rank, self.ctx.world_size)
        )
        per_user = evaluate(
            user_emb,
            item_emb,
            evaluated,
            *self.masks[split],
            ks=self.cfg.topk,
            batch_size=self.cfg.user_batch_size,
            user_slice=shard,
        )
        gathered = {
            name: self.ctx.all_gather_rows(torch.from_numpy(np.ascontiguousarray(values))).numpy()
            for name, values in sorted(per_user.items())
        }
        return mean_metrics(gathered)

    def popularity(self, split: str) -> dict[str, float]:
        """The popularity ranking's metrics on ``split``, through the same masking."""
        users, items = popularity_embeddings(self.n_users, self.n_items, self.train_items)
        if self.popularity_counts is not None:
            items = torch.from_numpy(np.asarray(self.popularity_counts, dtype=np.float64)).unsqueeze(1)
        return self.evaluate(users, items, split)
