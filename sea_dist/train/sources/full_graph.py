"""Full-graph mode: the reference's exact forward over the whole graph every step (one process).

Nothing is sampled or prepared ahead; the per-user tables are dense and trained by the same
Adam as the network, as the authors' code does; no DDP.
"""
from __future__ import annotations

import torch
from torch import nn

from sea_dist.train.sources.base import StepInputs, StepOutput
from sea_dist.train.sources.whole_graph import WholeGraphSource


class FullGraphSource(WholeGraphSource):
    name = "full_graph"
    prefetch_depth = 0  # nothing to prepare

    def make_tables(self, modalities: list[str]):
        self.tables = self._user_tables(modalities, sparse=False)
        return self.tables

    def dense_table_parameters(self) -> list[nn.Parameter]:
        return list(self.tables.parameters())  # the reference: one dense Adam over network and tables

    def training_model(self, model: nn.Module) -> nn.Module:
        return model

    def forward(self, model: nn.Module, inputs: StepInputs) -> StepOutput:
        """The reference's forward over everything, then the step's triples' scores."""
        user_rep, item_rep = model.forward_full(self.features, self.tables, self.full_graph)
        views = model.auxiliary_views(self.features)
        u = user_rep[torch.from_numpy(inputs.users).to(self.device)]
        pos = (u * item_rep[torch.from_numpy(inputs.pos).to(self.device)]).sum(1)
        neg = (u * item_rep[torch.from_numpy(inputs.neg).to(self.device)]).sum(1)
        return pos, neg, views, self.tables

    def shared_table_state(self) -> tuple[dict, dict]:
        return self.tables.state_dict(), {}

    def load_shared_table_state(self, tables: dict, optimizer: dict) -> None:
        self.tables.load_state_dict(tables)  # its moments are in the dense optimizer's state

    def _dense_optimizer_to_publish(self, optimizer: torch.optim.Optimizer) -> dict:
        return {}  # its Adam also spans the user tables: no use to another run's rows
