"""Partitioned mode: each worker holds one DGL partition, not the whole graph.

The same loop as the other modes (:mod:`sea_dist.train.loop`); what differs is where each input
comes from:

* **graph**: this worker's partition of a prepared version (``jobs/prepare.py``), in local
  ids; the sampler draws from it with full-graph degrees (the halo rule is in
  :mod:`sea_dist.graph.partition`);
* **triples**: the training edges of the users this partition owns, each once per epoch, split
  into the same number of steps on every worker (DDP needs equal step counts) — batch sizes are
  proportional to the partitions' edge counts, the global batch stays ``train.batch_size``;
  negatives are uniform over the partition's items (not the user's positives)
  (:class:`~sea_dist.train.epoch_data.PartitionEpochPlan`);
* **features**: rows fetched per batch from the Parquet shards through a
  :class:`~sea_dist.data.feature_store.FeatureStore` (only the rows a batch needs, cached);
* **per-user tables**: sharded by owning partition (or replicated, for equivalence checks),
  gathered per step and updated sparsely (:mod:`sea_dist.train.sharded_tables`);
* **evaluation**: each worker computes its own users' and items' representations over its
  partition, exactly (:mod:`sea_dist.train.exact_inference`), the items' are all-gathered, each
  worker ranks its own users (``eval.max_users`` samples them at catalog size).

Checkpoints: rank 0 writes the shared state, every rank its table shard (``rank-NNNNN.pt``,
:mod:`sea_dist.train.sources.partition_checkpoint`); Ray Train merges them into one directory;
a restarted worker group (``train.max_failures``) or ``--resume`` reads back each rank's own
shard. Left for later (the config rejects it): warm start, which would have to translate users
between prepared versions shard by shard.
"""
from __future__ import annotations

import logging
import math
import posixpath
import time
from typing import Callable

import numpy as np
import pyarrow.parquet as pq
import torch

from sea_dist.config import Config
from sea_dist.data.dataset import make_filesystem
from sea_dist.data.feature_store import open_feature_stores
from sea_dist.storage.ids import ids_to_numpy
from sea_dist.eval.evaluator import Evaluator
from sea_dist.graph.build import TrainGraph
from sea_dist.graph.partition import load_local_partition
from sea_dist.graph.sampler import BatchSampler
from sea_dist.model.blocks import MiniBatch
from sea_dist.ops.outputs import RunOutputs
from sea_dist.ops.publish import Publisher
from sea_dist.storage.retry import with_retries
from sea_dist.prepare.job import load_prepared
from sea_dist.runtime.distributed import WorkerContext
from sea_dist.train.epoch_data import NegativeSampler, PartitionEpochPlan
from sea_dist.train.exact_inference import HaloExchange, LocalOperators, exact_partition_embeddings
from sea_dist.train.sharded_tables import TrafficStats, build_user_tables
from sea_dist.train.sources import partition_checkpoint, partition_summary
from sea_dist.train.sources.base import (
    BatchSource,
    StepInputs,
    StepOutput,
    forward_on_batch,
    peak_rss_mb,
    timed_sample_and_fetch,
)

log = logging.getLogger(__name__)


class PartitionedSource(BatchSource):
    name = "partitioned"

    def __init__(self, cfg: Config, ctx: WorkerContext, dataset=None):
        super().__init__(cfg, ctx)  # ``dataset`` is unused: the prepared version is the input
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
        self.user_bounds = parts["user_offsets"]
        self.prefetch_depth = cfg.train.prefetch_batches

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
        degrees = dict(user_degree=torch.from_numpy(lp.user_degree), item_degree=torch.from_numpy(lp.item_degree))
        self.sampler = BatchSampler(graph, cfg.graph.fanouts, cfg.graph.knn_fanout, cfg.model.n_mm_layers, **degrees)
        self.operators = LocalOperators.from_sampler_graph(self.sampler, graph.knn_rows, graph.knn_cols, graph.knn_weights)
        self.user_exchange = HaloExchange(lp.user_global, lp.user_inner, parts["user_offsets"], ctx)
        self.item_exchange = HaloExchange(lp.item_global, lp.item_inner, parts["item_offsets"], ctx)
        self.own_users_local = _own(lp.user_inner, lp.user_global)
        self.own_items_local = _own(lp.item_inner, lp.item_global)
        self.inference_exchange: dict = {}  # the last evaluation's halo traffic (the summary's)
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
        self.table_traffic = TrafficStats()  # summed over the run's steps
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

    def make_tables(self, modalities: list[str]):
        cfg = self.cfg
        self.tables = build_user_tables(
            cfg.train.user_tables, self.n_users_global, modalities, cfg.model.embedding_dim, self.ctx,
            cfg.train.lr, cfg.train.seed, bounds=self.user_bounds,
        )
        return self.tables

    def table_optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.tables.optimizer]

    # ---- one step -------------------------------------------------------------------------
    def plan_epoch(self, epoch: int) -> PartitionEpochPlan:
        steps = max(1, math.ceil(int(self.manifest["dataset"]["n_train"]) / self.cfg.train.batch_size))
        return PartitionEpochPlan(
            self.train_users, self.train_items, self.negatives, steps, self.cfg.train.seed, epoch, self.ctx.rank,
            self.edges_per_rank,
        )

    def fetch_features(self, local_items: torch.Tensor) -> tuple[dict[str, torch.Tensor], int]:
        """The raw feature rows of the partition's ``local_items``, and the bytes read for them."""
        raw = self.part.item_raw[local_items.numpy()]
        inputs, fetched = {}, 0
        for m, store in self.stores.items():
            before = store.stats.bytes_read
            inputs[m] = torch.from_numpy(store.fetch(raw)).to(self.device)
            fetched += store.stats.bytes_read - before
        return inputs, fetched

    def sample(self, users_t, pos_t, neg_t) -> MiniBatch:
        """A computation graph whose users carry prepared (global) ids: the tables' row ids."""
        batch = self.sampler.sample(users_t, pos_t, neg_t)
        batch.input_users = self.user_global[batch.input_users]
        batch.seed_users = self.user_global[batch.seed_users]
        self.block_sizes += np.array([1, batch.input_users.numel(), batch.input_items.numel(), batch.num_edges])
        return batch

    def prepare_inputs(self, inputs: StepInputs) -> None:
        timed_sample_and_fetch(inputs, self.sample, self.fetch_features)

    def forward(self, model, inputs: StepInputs) -> StepOutput:
        rows = self.tables.gather(inputs.batch.input_users.to(self.device))  # a collective when sharded
        return forward_on_batch(model, inputs, rows, self.cfg, self.device)

    def zero_table_grads(self) -> None:
        self.tables.zero_grad()

    def push_table_grads(self, rows) -> None:
        self.tables.push_gradients(rows)

    def step_tables(self) -> None:
        traffic = self.tables.step()
        for name, value in traffic.as_dict().items():
            if hasattr(self.table_traffic, name):
                setattr(self.table_traffic, name, getattr(self.table_traffic, name) + value)

    # ---- evaluation and export -------------------------------------------------------------
    def embeddings(self, model, evaluation: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(own users' representations in prepared-id order, every item's in prepared-id order).

        Exactly the full-graph computation (:mod:`sea_dist.train.exact_inference`). With
        ``evaluation`` only the rows of the users the evaluator ranks are kept (the others are
        zero): the rows it does not need are not copied out.
        """
        result = exact_partition_embeddings(
            model,
            self.operators.to(self.device),
            self.user_exchange,
            self.item_exchange,
            self.own_users_local,
            torch.from_numpy(self.part.user_global[self.own_users_local]),
            self.own_items_local,
            self.part.n_users,
            self.part.n_items,
            lambda local: self.fetch_features(torch.from_numpy(local))[0],
            self.tables.held_rows,
            chunk=max(1, self.cfg.eval.user_batch_size),
        )
        self.inference_exchange = result.exchange.as_dict()
        user_rep = result.users
        if evaluation:
            ranked = np.union1d(self.evaluator.splits["valid"].users, self.evaluator.splits["test"].users)
            keep = torch.from_numpy(np.asarray(ranked, dtype=np.int64)).to(user_rep.device)
            user_rep = torch.zeros_like(user_rep).index_copy_(0, keep, user_rep[keep])
        all_items = self.ctx.all_gather_rows(result.items.contiguous())  # rank order = prepared order
        return user_rep.to(self.device), all_items.to(self.device)

    def item_degree_of(self, items: np.ndarray) -> np.ndarray:
        return self.evaluator.popularity_counts[np.asarray(items, dtype=np.int64)].astype(np.int64)

    def cache_hit_ratio(self) -> float:
        hits = sum(s.stats.cache_hits for s in self.stores.values())
        served = sum(s.stats.rows_served for s in self.stores.values())
        return hits / served if served else 1.0

    # ---- checkpoints: state.pt from rank 0, a table-shard file from every rank --------------
    def table_rows_state(self) -> dict:
        """The rows only: the best epoch's copy needs no SparseAdam moments (which would
        triple it, in memory and in every checkpoint)."""
        return self.tables.rows_state()

    def load_table_rows(self, state: dict) -> None:
        self.tables.load_rows(state)

    def shared_table_state(self) -> tuple[dict, dict]:
        return {}, {}  # each rank's shard is in its own file

    def load_shared_table_state(self, tables: dict, optimizer: dict) -> None:
        self.tables.load_state_dict(tables)  # this rank's shard with its SparseAdam state

    def shared_best_state(self, best_state: dict | None) -> dict:
        return {k: v for k, v in (best_state or {}).items() if k != "tables"}

    def attaches_checkpoint(self) -> bool:
        return True  # each rank holds rows no other rank has

    def write_rank_checkpoint(self, directory: str, progress: dict, best_state: dict | None) -> int:
        return partition_checkpoint.write_shard(
            directory, self.ctx, self.manifest["version"], progress, self.tables.state_dict(),
            (best_state or {}).get("tables", {}),
        )

    def checkpoint_to_load(self, state: dict) -> dict:
        return partition_checkpoint.merge_shard(state, self.ctx, self.manifest["version"])

    # ---- outputs ---------------------------------------------------------------------------
    def dataset_summary(self) -> dict:
        return partition_summary.dataset_summary(self.manifest, self.cfg.data.root, self.modality_dims)

    def summary_extras(self, steps: int, epochs: int) -> dict:
        return {"partition": partition_summary.partition_summary(self, steps, epochs)}

    def table_rows(self) -> int:
        """Rows of the per-user tables this rank holds."""
        return int(next(iter(self._table_module().parameters())).shape[0])

    def table_bytes(self) -> int:
        """Parameters plus SparseAdam's two moments per parameter."""
        return 3 * sum(p.numel() * p.element_size() for p in self._table_module().parameters())

    def _table_module(self) -> torch.nn.Module:
        return getattr(self.tables, "local", None) or self.tables.tables

    def published_state(self, parameters: dict, modalities: list[str], optimizer) -> dict:
        """Network and Q only: the user rows are sharded and keyed by prepared id."""
        return {
            "model": parameters["model"], "club": parameters["club"],
            "modalities": list(modalities), "mode": self.name, "dense_optimizer": {},
        }

    def stage_outputs(
        self, embeddings: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[Publisher, RunOutputs, str, str] | None:
        """A collective: every rank writes its own users' embeddings, rank 0 the items' and
        publishes (MANIFEST.json last, after every rank's files are in place)."""
        cfg, ctx = self.cfg, self.ctx
        publisher = Publisher(cfg.output.output_dir, cfg.data.s3_endpoint_url)
        publish_id = ctx.broadcast_object(publisher.new_publish_id(cfg.train.run_name) if ctx.is_main else None)
        staged = RunOutputs(publisher.run_prefix(publish_id), cfg.data.s3_endpoint_url)
        if cfg.output.write_embeddings:
            user_rep, item_rep = embeddings()
            staged.write_embeddings("users", self.part.user_raw[self.own_users_local], user_rep, name_prefix=f"r{ctx.rank:04d}-")
            if ctx.is_main:
                staged.write_embeddings("items", self._item_raw_ids(), item_rep)
        ctx.barrier()
        if not ctx.is_main:
            return None
        return publisher, staged, publish_id, self.manifest["dataset"]["version"]

    def _item_raw_ids(self) -> np.ndarray:
        fs, path = make_filesystem(self.prepared.uri, self.cfg.data.s3_endpoint_url)
        with fs.open(posixpath.join(path, "id_maps", "items.parquet"), "rb") as f:
            return ids_to_numpy(pq.read_table(f, columns=["raw_id"]).column("raw_id"))


def _own(inner: np.ndarray, global_ids: np.ndarray) -> np.ndarray:
    """Local indices of this partition's own nodes, in prepared-id order."""
    local = np.flatnonzero(inner)
    return local[np.argsort(global_ids[local], kind="stable")]
