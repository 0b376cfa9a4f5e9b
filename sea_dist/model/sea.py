"""SEA as plain torch modules: no Ray, no process groups, no DGL.

The dense network (:class:`SEA`) and the per-user tables (:class:`UserTables`) are separate
modules because they are trained differently at scale: dense parameters are all-reduced by
DDP, while user rows are few per step and are updated sparsely (``sea_dist.train``).
Both graph modes go through the same per-modality pieces, so they compute the same function:

- :meth:`SEA.forward_full` propagates over the whole graph (the reference's computation);
- :meth:`SEA.forward_batch` propagates over a sampled :class:`~sea_dist.model.blocks.MiniBatch`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sea_dist.config import ModelConfig
from sea_dist.model.blocks import MiniBatch
from sea_dist.model.full_graph import FullGraph


class ProjectionHead(nn.Module):
    """Alignment head ``Lin -> BN -> ReLU -> Lin -> BN -> ReLU -> Lin``, L2-normalised."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=1)


class ModalityBranch(nn.Module):
    """Everything SEA learns for one modality's items."""

    def __init__(self, dim: int, cfg: ModelConfig, with_projection: bool = True):
        super().__init__()
        if dim % 2:
            raise ValueError(f"modality dim must be even (SEA splits it in halves), got {dim}")
        half = dim // 2
        k = cfg.embedding_dim
        self.transform = nn.Linear(dim, dim)  # L_m
        self.gcn_in_hidden = nn.Linear(dim, 4 * k)  # W1
        self.gcn_in_out = nn.Linear(4 * k, k)  # W2
        # H_m; absent with a single modality (no alignment term, so it would get no gradient)
        self.projection = (
            ProjectionHead(half, cfg.proj_hidden_dim, cfg.proj_out_dim) if with_projection else None
        )
        self.club_generic = nn.Linear(half, cfg.club_dim)  # T1_m
        self.club_unique = nn.Linear(half, cfg.club_dim)  # T2_m
        self.half = half

    def item_inputs(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw features -> (z_m, the GCN's item input a_m)."""
        z = self.transform(raw)
        return z, self.gcn_in_out(F.leaky_relu(self.gcn_in_hidden(z)))

    def generic(self, z: torch.Tensor) -> torch.Tensor:
        return z[:, : self.half]

    def unique(self, z: torch.Tensor) -> torch.Tensor:
        return z[:, self.half :]


def _xavier_normal_std(fan_in: int, fan_out: int) -> float:
    return math.sqrt(2.0 / (fan_in + fan_out))


class UserTables(nn.Module):
    """Per-user free parameters: a preference row per modality and the modality weights.

    ``sparse=True`` makes lookups produce sparse gradients (touched rows only), which is
    what the distributed trainer exchanges; the full-graph reference uses dense ones.
    """

    def __init__(self, n_users: int, modalities: list[str], dim: int, sparse: bool = False):
        super().__init__()
        self.modalities = list(modalities)
        self.preferences = nn.ModuleDict(
            {m: nn.Embedding(n_users, dim, sparse=sparse) for m in modalities}
        )
        self.modality_weights = nn.Embedding(n_users, len(modalities), sparse=sparse)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Reference init: xavier-normal preferences; softmax of xavier-normal weights.

        The reference draws the weights as an ``(U, M, 1)`` tensor, whose xavier fans are
        ``M`` and ``U``; we keep that scale.
        """
        for table in self.preferences.values():
            n, d = table.weight.shape
            table.weight.normal_(0.0, _xavier_normal_std(d, n), generator=generator)
        n, m = self.modality_weights.weight.shape
        noise = torch.empty(n, m).normal_(0.0, _xavier_normal_std(m, n), generator=generator)
        self.modality_weights.weight.copy_(torch.softmax(noise, dim=1))

    @property
    def n_users(self) -> int:
        return self.modality_weights.num_embeddings


@dataclass
class AuxiliaryViews:
    """What the separation and alignment losses need from the loss items' z_m."""

    club_generic: dict[str, torch.Tensor]  # T1_m(g_m)
    club_unique: dict[str, torch.Tensor]  # T2_m(u_m)
    projected: dict[str, torch.Tensor]  # H_m(g_m), L2-normalised; empty with one modality


@dataclass
class BatchOutput:
    pos_scores: torch.Tensor
    neg_scores: torch.Tensor
    views: AuxiliaryViews


class SEA(nn.Module):
    def __init__(self, modalities: dict[str, int], cfg: ModelConfig):
        super().__init__()
        if not modalities:
            raise ValueError("SEA needs at least one modality")
        self.modalities = list(modalities)
        self.cfg = cfg
        self.alignment = len(modalities) >= 2
        self.branches = nn.ModuleDict(
            {m: ModalityBranch(d, cfg, with_projection=self.alignment) for m, d in modalities.items()}
        )

    def forward(
        self, batch: MiniBatch, input_features: dict[str, torch.Tensor], tables: "UserTables"
    ) -> BatchOutput:
        """The sampled-mode step; ``forward`` so that DDP's hooks see it."""
        return self.forward_batch(batch, input_features, tables)

    def auxiliary_views(self, item_z: dict[str, torch.Tensor]) -> AuxiliaryViews:
        generic, unique, projected = {}, {}, {}
        for m, z in item_z.items():
            branch = self.branches[m]
            generic[m] = branch.club_generic(branch.generic(z))
            unique[m] = branch.club_unique(branch.unique(z))
            if branch.projection is not None:
                projected[m] = branch.projection(branch.generic(z))
        return AuxiliaryViews(generic, unique, projected)

    # ---- full graph -------------------------------------------------------------------
    def forward_full(
        self, features: dict[str, torch.Tensor], tables: UserTables, graph: FullGraph
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """All users' and items' final representations, plus every item's z_m."""
        user_parts, item_parts, item_z = [], [], {}
        weights = tables.modality_weights.weight
        for index, m in enumerate(self.modalities):
            z, a = self.branches[m].item_inputs(features[m])
            item_z[m] = z
            h_user = F.normalize(tables.preferences[m].weight)
            h_item = F.normalize(a)
            r_user, r_item = h_user, h_item
            for _ in range(self.cfg.n_ui_layers):
                h_user, h_item = graph.user_item @ h_item, graph.item_user @ h_user
                r_user, r_item = r_user + h_user, r_item + h_item
            user_parts.append(weights[:, index : index + 1] * r_user)
            item_parts.append(r_item)
        combined = torch.cat(item_parts, dim=1)
        mixed = combined
        for _ in range(self.cfg.n_mm_layers):
            mixed = graph.item_item @ mixed
        return torch.cat(user_parts, dim=1), combined + mixed, item_z

    # ---- sampled minibatch ------------------------------------------------------------
    def forward_batch(
        self, batch: MiniBatch, input_features: dict[str, torch.Tensor], tables: UserTables
    ) -> BatchOutput:
        """Scores of the batch's triples over its sampled computation graph.

        ``input_features[m]`` holds the raw rows of ``batch.input_items`` in that order.
        """
        n_seed_items = batch.seed_items.numel()
        user_parts, item_parts, item_z = [], [], {}
        weights = tables.modality_weights(batch.seed_users)
        for index, m in enumerate(self.modalities):
            z, a = self.branches[m].item_inputs(input_features[m])
            item_z[m] = z[:n_seed_items]
            h_user = F.normalize(tables.preferences[m](batch.input_users))
            h_item = F.normalize(a)
            layers = [(h_user, h_item)]
            for hop in batch.ui_hops:
                h_user, h_item = (
                    hop.item_to_user.aggregate(h_item),
                    hop.user_to_item.aggregate(h_user),
                )
                layers.append((h_user, h_item))
            n_users, n_items = h_user.shape[0], h_item.shape[0]
            r_user = sum(layer[0][:n_users] for layer in layers)
            r_item = sum(layer[1][:n_items] for layer in layers)
            user_parts.append(weights[:, index : index + 1] * r_user)
            item_parts.append(r_item)
        combined = torch.cat(item_parts, dim=1)
        mixed = combined
        for hop in batch.knn_hops:
            mixed = hop.aggregate(mixed)
        user_rep = torch.cat(user_parts, dim=1)
        item_rep = combined[:n_seed_items] + mixed
        users = user_rep[batch.batch_user]
        pos = (users * item_rep[batch.batch_pos]).sum(dim=1)
        neg = (users * item_rep[batch.batch_neg]).sum(dim=1)
        return BatchOutput(pos, neg, self.auxiliary_views(item_z))
