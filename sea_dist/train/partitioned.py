"""Partition-local training: each worker holds one DGL partition, not the whole graph.

The same loop as :class:`~sea_dist.train.loop.Trainer` (read that first); what differs is where
each input comes from:

* **graph**: this worker's partition of a prepared version (``jobs/prepare.py``), in local
  ids; the sampler draws from it with full-graph degrees (the halo rule is in
  :mod:`sea_dist.graph.partition`);
* **triples**: the training edges of the users this partition owns, each once per epoch, split
  into the same number of steps on every worker (DDP needs equal step counts) — batch sizes are
  proportional to the partitions' edge counts, the global batch stays ``train.batch_size``;
  negatives are uniform over the partition's items (not the user's positives);
* **features**: rows fetched per batch from the Parquet shards through a
  :class:`~sea_dist.data.feature_store.FeatureStore` (only the rows a batch needs, cached);
* **per-user tables**: sharded by owning partition (or replicated, for equivalence checks),
  gathered per step and updated sparsely (:mod:`sea_dist.train.sharded_tables`);
* **evaluation**: each worker computes its own users' and items' representations over its
  partition, the items' are all-gathered, each worker ranks its own users
  (``eval.max_users`` samples them at catalog size).

Checkpoints: rank 0 writes the shared state, every rank its table shard (``rank-NNNNN.pt``),
Ray Train merges them into one directory; a restarted worker group (``train.max_failures``) or
``--resume`` reads back each rank's own shard. Left for later (the config rejects it): warm
start, which would have to translate users between prepared versions shard by shard.
"""
from __future__ import annotations

import logging
import math
import os
import posixpath
import time
from dataclasses import asdict

import numpy as np
import pyarrow.parquet as pq
import torch

from sea_dist.config import Config
from sea_dist.storage.fs import make_filesystem
from sea_dist.data.feature_store import open_feature_stores
from sea_dist.storage.ids import ids_to_numpy
from sea_dist.eval.evaluator import Evaluator
from sea_dist.graph.build import TrainGraph
from sea_dist.graph.partition import load_local_partition
from sea_dist.graph.sampler import BatchSampler
from sea_dist.model.blocks import MiniBatch
from sea_dist.ops.publish import Publisher
from sea_dist.ops.outputs import RunOutputs
from sea_dist.ops.redact import redact_uri
from sea_dist.storage.retry import with_retries
from sea_dist.prepare.job import load_prepared
from sea_dist.train.checkpoint import save_checkpoint, save_rank_checkpoint
from sea_dist.runtime.distributed import WorkerContext
from sea_dist.train.epoch_data import NegativeSampler
from sea_dist.train.exact_inference import HaloExchange, LocalOperators, exact_partition_embeddings
from sea_dist.train.loop import EpochTimes, Trainer, peak_rss_mb
from sea_dist.train.sharded_tables import TrafficStats, build_user_tables

log = logging.getLogger(__name__)


class PartitionEpochPlan:
    """This worker's shuffled triples of one epoch, cut into the world's common step count.

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


class PartitionedTrainer(Trainer):
    mode = "partitioned"

    def _setup_data(self) -> None:
        cfg, ctx = self.cfg, self.ctx
        self.mode_name = "partitioned"
        endpoint = cfg.data.s3_endpoint_url
        self.prepared = load_prepared(cfg.data.prepared, endpoint)
        manifest = self.prepared.manifest
        parts = manifest["partitions"]
        if parts["num_parts"] != ctx.world_size:
            raise ValueError(
                f"{cfg.data.prepared} has {parts['num_parts']} partitions but the run has "
                f"{ctx.world_size} workers: each worker trains one partition (set "
                f"train.num_workers={parts['num_parts']} or prepare again with prepare.num_parts)"
            )
        self.manifest = manifest
        self.modality_dims = {m: int(d) for m, d in manifest["dataset"]["modalities"].items()}
        self.n_users_global = int(manifest["dataset"]["n_users"])
        self.n_items_global = int(manifest["dataset"]["n_items"])
        self.user_lo, self.user_hi = parts["user_offsets"][ctx.rank : ctx.rank + 2]
        self.item_lo, self.item_hi = parts["item_offsets"][ctx.rank : ctx.rank + 2]
        self.user_bounds = parts["user_offsets"]

        started = time.monotonic()
        fs, path = make_filesystem(self.prepared.uri, endpoint)
        lp = with_retries(lambda: load_local_partition(fs, path, ctx.rank), f"reading partition {ctx.rank}")
        self.part = lp
        log.info(
            "partition %d: %d users (%d own), %d items (%d own), %d edges, %d train; %.1f MB, %.1fs",
            ctx.rank, lp.n_users, int(lp.user_inner.sum()), lp.n_items, int(lp.item_inner.sum()),
            len(lp.ui_users), int(lp.train_mask.sum()), lp.nbytes() / 1e6, time.monotonic() - started,
        )
        self.train_users = lp.ui_users[lp.train_mask]
        self.train_items = lp.ui_items[lp.train_mask]
        self.edges_per_rank = [
            int(n) for n in ctx.all_gather_rows(torch.tensor([[len(self.train_users)]], dtype=torch.int64)).flatten()
        ]
        self.partition_bytes = lp.nbytes()  # as loaded, before the edge lists are handed over
        graph = TrainGraph(
            n_users=lp.n_users,
            n_items=lp.n_items,
            ui_users=torch.from_numpy(lp.ui_users),
            ui_items=torch.from_numpy(lp.ui_items),
            knn_rows=torch.from_numpy(lp.knn_dst),
            knn_cols=torch.from_numpy(lp.knn_src),
            knn_weights=torch.from_numpy(lp.knn_w),
        )
        self.graph = None  # the samplers' CSC copy is the only graph kept (see below)
        self.full_graph = None
        self.features = None
        degrees = dict(user_degree=torch.from_numpy(lp.user_degree), item_degree=torch.from_numpy(lp.item_degree))
        self.sampler = BatchSampler(graph, cfg.graph.fanouts, cfg.graph.knn_fanout, cfg.model.n_mm_layers, **degrees)
        self.operators = LocalOperators.from_sampler_graph(self.sampler, graph.knn_rows, graph.knn_cols, graph.knn_weights)
        self.user_exchange = HaloExchange(lp.user_global, lp.user_inner, parts["user_offsets"], ctx)
        self.item_exchange = HaloExchange(lp.item_global, lp.item_inner, parts["item_offsets"], ctx)
        self.own_users_local = self._own(lp.user_inner, lp.user_global)
        self.own_items_local = self._own(lp.item_inner, lp.item_global)
        self.inference_exchange: dict = {}
        # The sampler holds its own CSC copy of the edges: drop the COO lists (two int64 arrays
        # of every stored edge, ~0.5 GB per worker on the 2M-user tier).
        del graph
        lp.ui_users = lp.ui_items = lp.train_mask = None
        # negatives come from the items with kNN rows here (the extras have none); under
        # MMRec's rule only those that occur in training anywhere (full-graph degree > 0)
        self.negatives = NegativeSampler(
            self.train_users, self.train_items, lp.n_dgl_items, rule=cfg.train.negative_items,
            train_item_mask=lp.item_degree[: lp.n_dgl_items] > 0,
        )
        self.stores = open_feature_stores(
            cfg.data.root, self.modality_dims, endpoint, cache_rows=cfg.train.feature_cache_rows
        )
        self.user_global = torch.from_numpy(lp.user_global)
        self.table_traffic = TrafficStats()
        self.block_sizes = np.zeros(4, dtype=np.int64)  # steps, input users, input items, block edges
        self.evaluator = self._partition_evaluator(fs, path)
        log.info("partition %d: set up, peak RSS %.0f MB", ctx.rank, peak_rss_mb())

    def _partition_evaluator(self, fs, path: str) -> Evaluator:
        """Evaluate the users this partition owns (indices ``global - user_lo``)."""
        cfg, lp = self.cfg, self.part
        held = with_retries(
            lambda: pq.read_table(fs.open(posixpath.join(path, "eval", f"part-{self.ctx.rank}.parquet"), "rb")),
            "reading held-out edges",
        )
        users = held.column("user").to_numpy() - self.user_lo
        items = held.column("item").to_numpy()
        split = held.column("split").to_numpy()
        n_own = self.user_hi - self.user_lo
        train_u = lp.user_global[self.train_users] - self.user_lo
        train_i = lp.item_global[self.train_items]
        if cfg.eval.max_users and cfg.eval.max_users < self.n_users_global:
            share = cfg.eval.max_users / self.n_users_global
            keep = np.random.default_rng([cfg.train.seed, 7, self.ctx.rank]).random(n_own) < share
            held_keep = keep[users]
            users, items, split = users[held_keep], items[held_keep], split[held_keep]
            # only the sampled users' training edges matter (they mask the ranked lists)
            train_keep = keep[train_u]
            train_u, train_i = train_u[train_keep], train_i[train_keep]
        popularity = with_retries(
            lambda: pq.read_table(fs.open(posixpath.join(path, "id_maps", "items.parquet"), "rb"), columns=["train_degree"]),
            "reading the item id map",
        ).column("train_degree").to_numpy()
        return Evaluator(
            n_own,
            self.n_items_global,
            {
                "train": (train_u, train_i),
                "valid": (users[split == 1], items[split == 1]),
                "test": (users[split == 2], items[split == 2]),
            },
            cfg.eval,
            self.ctx,
            users_sharded=True,
            popularity_counts=popularity,
        )

    def _make_tables(self) -> None:
        cfg = self.cfg
        self.tables = build_user_tables(
            cfg.train.user_tables,
            self.n_users_global,
            self.model.modalities,
            cfg.model.embedding_dim,
            self.ctx,
            cfg.train.lr,
            cfg.train.seed,
            bounds=self.user_bounds,
        )
        self.table_optimizer = None  # the table object owns its optimizer

    # ---- one step -------------------------------------------------------------------------
    def _epoch_plan(self, epoch: int):
        steps = max(1, math.ceil(int(self.manifest["dataset"]["n_train"]) / self.cfg.train.batch_size))
        return PartitionEpochPlan(
            self.train_users, self.train_items, self.negatives, steps, self.cfg.train.seed, epoch, self.ctx.rank,
            self.edges_per_rank,
        )

    def _fetch_features(self, local_items: torch.Tensor) -> tuple[dict[str, torch.Tensor], int]:
        raw = self.part.item_raw[local_items.numpy()]
        inputs, fetched = {}, 0
        for m, store in self.stores.items():
            before = store.stats.bytes_read
            inputs[m] = torch.from_numpy(store.fetch(raw)).to(self.device)
            fetched += store.stats.bytes_read - before
        return inputs, fetched

    def _global_users(self, batch: MiniBatch) -> MiniBatch:
        """The model looks table rows up by id: give it prepared (global) user ids."""
        batch.input_users = self.user_global[batch.input_users]
        batch.seed_users = self.user_global[batch.seed_users]
        return batch

    def _sample(self, users_t, pos_t, neg_t) -> MiniBatch:
        batch = self._global_users(self.sampler.sample(users_t, pos_t, neg_t))
        self.block_sizes += np.array([1, batch.input_users.numel(), batch.input_items.numel(), batch.num_edges])
        return batch

    def _gather_table_rows(self, batch: MiniBatch):
        return self.tables.gather(batch.input_users.to(self.device))

    def _scheduled_optimizers(self) -> list:
        return [self.optimizer, self.tables.optimizer]

    def _zero_table_grads(self) -> None:
        self.tables.zero_grad()

    def _sync_table_grads(self, rows) -> None:
        self.tables.push_gradients(rows)

    def _step_tables(self) -> None:
        traffic = self.tables.step()
        for name, value in traffic.as_dict().items():
            if hasattr(self.table_traffic, name):
                setattr(self.table_traffic, name, getattr(self.table_traffic, name) + value)

    # ---- evaluation and outputs -------------------------------------------------------------
    def _own(self, inner: np.ndarray, global_ids: np.ndarray) -> np.ndarray:
        """Local indices of this partition's own nodes, in prepared-id order."""
        local = np.flatnonzero(inner)
        return local[np.argsort(global_ids[local], kind="stable")]

    @torch.no_grad()
    def embeddings(self, own_user_index: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(own users' representations in prepared-id order, every item's in prepared-id order).

        Exactly the full-graph computation (:mod:`sea_dist.train.exact_inference`). Users:
        all own users, or only the rows at ``own_user_index`` are kept (the others are zero):
        evaluation ranks only the users it samples, and the rows it does not need are not
        copied out.
        """
        self.model.eval()
        result = exact_partition_embeddings(
            self.model,
            self.operators.to(self.device),
            self.user_exchange,
            self.item_exchange,
            self.own_users_local,
            torch.from_numpy(self.part.user_global[self.own_users_local]),
            self.own_items_local,
            self.part.n_users,
            self.part.n_items,
            lambda local: self._fetch_features(torch.from_numpy(local))[0],
            self.tables.held_rows,
            chunk=max(1, self.cfg.eval.user_batch_size),
        )
        self.model.train()
        self.inference_exchange = result.exchange.as_dict()
        user_rep = result.users
        if own_user_index is not None:
            keep = torch.from_numpy(np.asarray(own_user_index, dtype=np.int64)).to(user_rep.device)
            user_rep = torch.zeros_like(user_rep).index_copy_(0, keep, user_rep[keep])
        all_items = self.ctx.all_gather_rows(result.items.contiguous())  # rank order = prepared order
        return user_rep.to(self.device), all_items.to(self.device)

    def validate(self) -> tuple[dict, dict, float]:
        started = time.monotonic()
        ranked = np.union1d(self.evaluator.splits["valid"].users, self.evaluator.splits["test"].users)
        user_rep, item_rep = self.embeddings(ranked)
        valid = self.evaluator.evaluate(user_rep, item_rep, "valid")
        test = self.evaluator.evaluate(user_rep, item_rep, "test")
        return valid, test, time.monotonic() - started

    def item_degree_of(self, items: np.ndarray) -> np.ndarray:
        return self.evaluator.popularity_counts[np.asarray(items, dtype=np.int64)].astype(np.int64)

    # ---- checkpoints: state.pt from rank 0, a table-shard file from every rank --------------
    def _attaches_checkpoint(self) -> bool:
        return True  # each rank holds rows no other rank has

    def _write_checkpoint(self, directory: str) -> int:
        """This rank's shard file, plus the shared ``state.pt`` on rank 0; Ray Train merges the
        workers' files into one checkpoint directory (``sea_dist.train.checkpoint``)."""
        size = os.path.getsize(save_rank_checkpoint(directory, self.ctx.rank, self.rank_state_dict()))
        if self.ctx.is_main:
            size += os.path.getsize(save_checkpoint(directory, self.state_dict()))
        return size

    def state_dict(self) -> dict:
        """What the ranks share; the table shards go to :meth:`rank_state_dict`."""
        state = super().state_dict()
        state["tables"] = {}
        state["best_state"] = {k: v for k, v in (self.best_state or {}).items() if k != "tables"}
        return state

    def parameters_state(self) -> dict:
        """As the base class, with the table rows only: the best epoch's copy needs no
        SparseAdam moments (which would triple it, in memory and in every checkpoint)."""
        return dict(super().parameters_state(), tables=self.tables.rows_state())

    def _load_table_rows(self, state: dict) -> None:
        self.tables.load_rows(state)

    def _checkpoint_stamp(self, progress: dict) -> list:
        """Which report a file belongs to: a shard must come from the same one as ``state.pt``."""
        partial = progress.get("partial_epoch") or {}
        return [progress["next_epoch"], partial.get("epoch", -1), partial.get("next_step", -1)]

    def rank_state_dict(self) -> dict:
        progress = asdict(self.progress)
        return {
            "rank": self.ctx.rank,
            "world_size": self.ctx.world_size,
            "prepared_version": self.manifest["version"],
            "stamp": self._checkpoint_stamp(progress),
            # this rank's own loss sums and timings of a half-done epoch (rank 0's are in state.pt)
            "partial_epoch": progress["partial_epoch"],
            "tables": self.tables.state_dict(),
            "best_tables": (self.best_state or {}).get("tables", {}),
        }

    def load_state(self, state: dict) -> None:
        mine = state.get("rank_state")
        where = f"checkpoint for rank {self.ctx.rank}"
        if not mine:
            raise ValueError(f"{where}: no table shard (a partitioned run checkpoints one per rank)")
        if (mine["rank"], mine["world_size"]) != (self.ctx.rank, self.ctx.world_size):
            raise ValueError(
                f"{where}: the shard is rank {mine['rank']} of {mine['world_size']}, this worker is "
                f"rank {self.ctx.rank} of {self.ctx.world_size}"
            )
        if mine["prepared_version"] != self.manifest["version"]:
            raise ValueError(
                f"{where}: written for prepared version {mine['prepared_version']}, this run trains "
                f"{self.manifest['version']} (other partitions, other table rows)"
            )
        if list(mine["stamp"]) != self._checkpoint_stamp(state["progress"]):
            raise ValueError(
                f"{where}: the shard and state.pt come from different reports (next epoch, epoch, "
                f"step: {list(mine['stamp'])} vs {self._checkpoint_stamp(state['progress'])}); "
                "a mixed-up checkpoint directory"
            )
        best = dict(state["best_state"], tables=mine["best_tables"]) if state["best_state"] else {}
        super().load_state(dict(state, tables=mine["tables"], best_state=best))
        self.progress.partial_epoch = mine["partial_epoch"]

    def summary(self, totals: EpochTimes, wall_s: float) -> dict:
        steps = max(totals.steps, 1)
        traffic = self.table_traffic.as_dict()
        traffic_rows = self.ctx.all_gather_rows(
            torch.tensor([[float(v) for v in traffic.values()]], dtype=torch.float64)
        )
        summary = super().summary(totals, wall_s)
        fetch = [s.stats for s in self.stores.values()]
        mine = [
            self.partition_bytes / 1e6,
            float(self._table_rows()),
            self._table_bytes() / 1e6,
            float(self.part.loaded_bytes),
            float(sum(f.bytes_read for f in fetch)),
            float(sum(f.seconds for f in fetch)),
            float(sum(f.rows_served for f in fetch)),
            float(sum(f.cache_hits for f in fetch)),
            *(self.block_sizes[1:] / max(int(self.block_sizes[0]), 1)).tolist(),
        ]
        per_worker = self.ctx.all_gather_rows(torch.tensor([mine], dtype=torch.float64))
        column = lambda i: [round(float(v), 3) for v in per_worker[:, i]]  # noqa: E731
        epochs = max(self.epochs_trained_here, 1)
        summary["partition"] = {
            "user_tables": self.cfg.train.user_tables,
            "graph_mb_per_worker": column(0),
            "user_table_rows_per_worker": [int(v) for v in per_worker[:, 1]],
            "user_table_mb_per_worker": column(2),
            "partition_bytes_read_per_worker": [int(v) for v in per_worker[:, 3]],
            "feature_bytes_read_per_epoch_per_worker": [round(float(v) / epochs) for v in per_worker[:, 4]],
            "feature_fetch_s_per_worker": column(5),
            "feature_cache_hit_ratio_per_worker": [
                round(float(h) / float(n), 4) if n else 1.0 for h, n in zip(per_worker[:, 7], per_worker[:, 6])
            ],
            "mean_input_users_per_step_per_worker": column(8),
            "mean_input_items_per_step_per_worker": column(9),
            "mean_block_edges_per_step_per_worker": column(10),
            # the last evaluation's halo exchanges (exact inference: one per layer)
            "inference_exchange_rank0": self.inference_exchange,
            "table_traffic_per_step_per_worker": {
                name: [round(float(v) / steps, 1) for v in traffic_rows[:, i]]
                for i, name in enumerate(traffic)
            },
        }
        return summary

    def _dataset_summary(self) -> dict:
        return {
            "name": self.manifest["dataset"]["name"],
            "version": self.manifest["dataset"]["version"],
            "root": redact_uri(self.cfg.data.root),
            "prepared": self.manifest["version"],
            "n_users": self.n_users_global,
            "n_items": self.n_items_global,
            "n_train": int(self.manifest["dataset"]["n_train"]),
            "modalities": self.modality_dims,
        }

    def _cache_hit_ratio(self) -> float:
        hits = sum(s.stats.cache_hits for s in self.stores.values())
        served = sum(s.stats.rows_served for s in self.stores.values())
        return hits / served if served else 1.0

    def _table_module(self) -> torch.nn.Module:
        return getattr(self.tables, "local", None) or self.tables.tables

    def _table_rows(self) -> int:
        return int(next(iter(self._table_module().parameters())).shape[0])

    def _table_bytes(self) -> int:
        """Parameters plus SparseAdam's two moments per parameter."""
        return 3 * sum(p.numel() * p.element_size() for p in self._table_module().parameters())

    def published_state(self) -> dict:
        state = {"model": self.model.state_dict(), "club": self.club.state_dict()}
        state.update(modalities=list(self.model.modalities), mode=self.mode_name, dense_optimizer={})
        return state

    def write_outputs(self, summary: dict) -> None:
        """A collective: every rank writes its own users' embeddings, rank 0 the rest and
        publishes (MANIFEST.json last, after every rank's files are in place). The best
        epoch's network and table rows are in place already: :meth:`summary` put them back."""
        cfg, ctx = self.cfg, self.ctx
        publisher = Publisher(cfg.output.output_dir, cfg.data.s3_endpoint_url)
        publish_id = ctx.broadcast_object(publisher.new_publish_id(cfg.train.run_name) if ctx.is_main else None)
        staged = RunOutputs(publisher.run_prefix(publish_id), cfg.data.s3_endpoint_url)
        if cfg.output.write_embeddings:
            user_rep, item_rep = self.embeddings()
            staged.write_embeddings("users", self.part.user_raw[self.own_users_local], user_rep, name_prefix=f"r{ctx.rank:04d}-")
            if ctx.is_main:
                item_raw = self._item_raw_ids()
                staged.write_embeddings("items", item_raw, item_rep)
        ctx.barrier()
        if ctx.is_main:
            self._publish(publisher, staged, publish_id, summary, self.manifest["dataset"]["version"])

    def _item_raw_ids(self) -> np.ndarray:
        fs, path = make_filesystem(self.prepared.uri, self.cfg.data.s3_endpoint_url)
        with fs.open(posixpath.join(path, "id_maps", "items.parquet"), "rb") as f:
            return ids_to_numpy(pq.read_table(f, columns=["raw_id"]).column("raw_id"))
