"""Replicated sampled mode: every worker holds the whole graph and samples its steps from it.

Each step's computation graph is drawn with DGL (on the input thread, ahead of the step), the
dense network trains under DDP, and the per-user tables are full replicas trained sparsely:
``SparseAdam`` on every rank after the sparse gradients are all-gathered and averaged
(:mod:`sea_dist.train.sparse_tables`), so the replicas stay identical.
"""
from __future__ import annotations

import torch

from sea_dist.config import Config
from sea_dist.data.dataset import Dataset
from sea_dist.graph.sampler import BatchSampler
from sea_dist.runtime.distributed import WorkerContext
from sea_dist.train.sources.base import StepInputs, StepOutput, forward_on_batch, timed_sample_and_fetch
from sea_dist.train.sources.whole_graph import WholeGraphSource
from sea_dist.train.sparse_tables import synchronize_sparse_gradients


class SampledSource(WholeGraphSource):
    name = "sampled"

    def __init__(self, cfg: Config, ctx: WorkerContext, dataset: Dataset | None = None):
        super().__init__(cfg, ctx, dataset)
        self.sampler = BatchSampler(self.graph, cfg.graph.fanouts, cfg.graph.knn_fanout, cfg.model.n_mm_layers)
        self.prefetch_depth = cfg.train.prefetch_batches
        self.table_optimizer: torch.optim.SparseAdam | None = None

    def make_tables(self, modalities: list[str]):
        self.tables = self._user_tables(modalities, sparse=True)
        self.table_optimizer = torch.optim.SparseAdam(list(self.tables.parameters()), lr=self.cfg.train.lr)
        return self.tables

    def table_optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.table_optimizer]

    # ---- one step -----------------------------------------------------------------------------
    def prepare_inputs(self, inputs: StepInputs) -> None:
        timed_sample_and_fetch(inputs, self.sampler.sample, self.fetch_features)

    def forward(self, model, inputs: StepInputs) -> StepOutput:
        return forward_on_batch(model, inputs, self.tables, self.cfg, self.device)

    def zero_table_grads(self) -> None:
        self.table_optimizer.zero_grad(set_to_none=True)

    def push_table_grads(self, rows) -> None:
        synchronize_sparse_gradients(self.tables, self.ctx)

    def step_tables(self) -> None:
        self.table_optimizer.step()

    # ---- checkpoints and outputs ----------------------------------------------------------------
    def shared_table_state(self) -> tuple[dict, dict]:
        return self.tables.state_dict(), self.table_optimizer.state_dict()

    def load_shared_table_state(self, tables: dict, optimizer: dict) -> None:
        self.tables.load_state_dict(tables)
        if optimizer:
            self.table_optimizer.load_state_dict(optimizer)

    def _dense_optimizer_to_publish(self, optimizer: torch.optim.Optimizer) -> dict:
        return optimizer.state_dict()  # dense-only Adam: a later sampled run can resume its moments
