"""What the full-graph and the replicated sampled modes share: every worker holds the whole dataset.

Setup reads the dataset, builds the training graph and keeps every item's feature rows in
memory; evaluation and export run the reference's full propagation over that graph; a
checkpoint is rank 0's ``state.pt`` alone (every rank holds the same tables); the published
model carries the user rows keyed by raw id, which is what a warm start needs.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from sea_dist.config import Config
from sea_dist.data.dataset import Dataset, load_dataset
from sea_dist.storage.ids import ids_to_state
from sea_dist.eval.evaluator import Evaluator
from sea_dist.graph.build import TrainGraph, build_train_graph
from sea_dist.model.sea import UserTables
from sea_dist.ops.outputs import RunOutputs
from sea_dist.ops.publish import Publisher
from sea_dist.ops.redact import redact_uri
from sea_dist.storage.retry import with_retries
from sea_dist.runtime.distributed import WorkerContext
from sea_dist.train.epoch_data import EpochPlan, NegativeSampler
from sea_dist.train.sources.base import BatchSource
from sea_dist.train.warm_start import apply_warm_start


class WholeGraphSource(BatchSource):
    """Dataset -> training graph, features, negatives and evaluator, all in this worker."""

    table_optimizer: torch.optim.Optimizer | None = None  # the tables' own (sampled: SparseAdam)

    def __init__(self, cfg: Config, ctx: WorkerContext, dataset: Dataset | None = None):
        super().__init__(cfg, ctx)
        self.dataset = dataset or with_retries(
            lambda: load_dataset(cfg.data.root, cfg.data.s3_endpoint_url), f"reading {cfg.data.root}"
        )
        ds = self.dataset
        self.modality_dims = dict(ds.meta.modalities)
        self.train_users, self.train_items = ds.split_edges(0)
        self.graph: TrainGraph = build_train_graph(
            ds.n_users, ds.n_items, self.train_users, self.train_items, ds.features, cfg.graph
        )
        self.full_graph = self.graph.full_graph().to(self.device)
        self.features = {m: torch.from_numpy(f).to(self.device) for m, f in ds.features.items()}
        self.negatives = NegativeSampler(
            self.train_users, self.train_items, ds.n_items, rule=cfg.train.negative_items
        )
        self.evaluator = Evaluator(
            ds.n_users,
            ds.n_items,
            {name: ds.split_edges(i) for i, name in enumerate(("train", "valid", "test"))},
            cfg.eval,
            ctx,
        )

    def _user_tables(self, modalities: list[str], sparse: bool) -> UserTables:
        return UserTables(self.dataset.n_users, modalities, self.cfg.model.embedding_dim, sparse=sparse).to(self.device)

    def plan_epoch(self, epoch: int) -> EpochPlan:
        cfg = self.cfg
        return EpochPlan(
            self.train_users, self.train_items, self.negatives, cfg.train.batch_size, cfg.train.seed, epoch
        )

    def fetch_features(self, items: torch.Tensor) -> tuple[dict[str, torch.Tensor], int]:
        """The raw feature rows of ``items`` per modality, and the bytes gathered."""
        inputs = {m: f[items.to(self.device)] for m, f in self.features.items()}
        return inputs, sum(t.numel() * t.element_size() for t in inputs.values())

    # ---- evaluation and export --------------------------------------------------------------
    def embeddings(self, model: nn.Module, evaluation: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Every user's and item's final representation (full propagation)."""
        return model.forward_full(self.features, self.tables, self.full_graph)

    def item_degree_of(self, items: np.ndarray) -> np.ndarray:
        return self.graph.item_degree[torch.from_numpy(np.asarray(items, dtype=np.int64))].numpy()

    # ---- checkpoints ------------------------------------------------------------------------
    def table_rows_state(self) -> dict:
        return self.tables.state_dict()

    def load_table_rows(self, state: dict) -> None:
        self.tables.load_state_dict(state)

    # ---- outputs ----------------------------------------------------------------------------
    def dataset_summary(self) -> dict:
        return {
            "name": self.dataset.meta.name,
            "version": self.dataset.meta.version,
            "root": redact_uri(self.dataset.root),
            "n_users": self.dataset.n_users,
            "n_items": self.dataset.n_items,
            "n_train": int(len(self.train_users)),
            "modalities": dict(self.dataset.meta.modalities),
        }

    def _dense_optimizer_to_publish(self, optimizer: torch.optim.Optimizer) -> dict:
        raise NotImplementedError

    def published_state(self, parameters: dict, modalities: list[str], optimizer: torch.optim.Optimizer) -> dict:
        """The (best) parameters with the raw ids their rows belong to."""
        state = dict(parameters)
        state.update(
            user_raw_ids=ids_to_state(self.dataset.user_raw_ids),
            item_raw_ids=ids_to_state(self.dataset.item_raw_ids),
            modalities=list(modalities),
            mode=self.name,
            dense_optimizer=self._dense_optimizer_to_publish(optimizer),
        )
        return state

    def stage_outputs(
        self, embeddings: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[Publisher, RunOutputs, str, str] | None:
        """Rank 0 alone: every rank holds every embedding."""
        if not self.ctx.is_main:
            return None
        cfg = self.cfg
        publisher = Publisher(cfg.output.output_dir, cfg.data.s3_endpoint_url)
        publish_id = publisher.new_publish_id(cfg.train.run_name)
        staged = RunOutputs(publisher.run_prefix(publish_id), cfg.data.s3_endpoint_url)
        if cfg.output.write_embeddings:
            user_rep, item_rep = embeddings()
            staged.write_embeddings("users", self.dataset.user_raw_ids, user_rep)
            staged.write_embeddings("items", self.dataset.item_raw_ids, item_rep)
        return publisher, staged, publish_id, self.dataset.meta.version

    def warm_start(self, published: dict, model: nn.Module, club: nn.Module, optimizer) -> dict:
        return apply_warm_start(published, model, club, optimizer, self, self.cfg.train.warm_start_optimizer)
