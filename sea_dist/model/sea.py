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
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from sea_dist.config import ModelConfig
from sea_dist.model.blocks import MiniBatch
from sea_dist.model.full_graph import FullGraph


#: ``(a, w) -> a @ w``; a data-parallel trainer may supply one that shares the product out over
#: its ranks (:class:`sea_dist.runtime.sharded_product.ShardedProduct`).
WeightProduct = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def linear_after_linear(
    x: torch.Tensor, outer: nn.Linear, weight: torch.Tensor, bias: torch.Tensor, product: WeightProduct | None = None
) -> torch.Tensor:
    """``outer(x @ weight.T + bias)``, multiplied in the cheaper order.

    SEA transforms raw features with a square ``d x d`` Linear (d = 4096 for image features)
    and every consumer of the result starts with a narrow Linear. Folding the two
    (``(outer.W @ weight) x``) costs ``out*d*d + n*d*out`` instead of ``n*d*d + n*d*out``:
    for thousands of items per step that is ~10-20x fewer FLOPs at d = 4096. Same function
    (matrix products are associative), float rounding aside. With ``product`` the fold is
    always taken (the choice must not depend on this rank's rows) and ``product`` forms it.
    """
    if product is None:
        if x.shape[0] <= outer.out_features:
            return outer(F.linear(x, weight, bias))
        folded_weight = outer.weight @ weight
    else:
        folded_weight = product(outer.weight, weight)
    folded_bias = outer.weight @ bias + outer.bias
    return F.linear(x, folded_weight, folded_bias)


class ProjectionHead(nn.Module):
    """Alignment head ``Lin -> BN -> ReLU -> Lin -> BN -> ReLU -> Lin``, L2-normalised.

    ``first`` is kept apart so it can be folded into the feature transform."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.first = nn.Linear(in_dim, hidden)
        self.rest = nn.Sequential(
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.from_first(self.first(x))

    def from_first(self, h: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.rest(h), dim=1)


@dataclass
class AuxiliaryViews:
    """What the separation and alignment losses need from the loss items' z_m."""

    club_generic: dict[str, torch.Tensor]  # T1_m(g_m)
    club_unique: dict[str, torch.Tensor]  # T2_m(u_m)
    projected: dict[str, torch.Tensor]  # H_m(g_m), L2-normalised; empty with one modality

    def to_float(self) -> "AuxiliaryViews":
        """fp32 copies (the losses run in fp32 when the forward ran under bf16 autocast)."""
        as_float = lambda d: {m: t.float() for m, t in d.items()}  # noqa: E731
        return AuxiliaryViews(as_float(self.club_generic), as_float(self.club_unique), as_float(self.projected))


class ModalityBranch(nn.Module):
    """Everything SEA learns for one modality's items.

    ``z = L(x)`` (split into generic and unique halves) is never materialised: every use of it
    starts with a Linear, folded into L by :func:`linear_after_linear`.
    """

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
        self.weight_product: WeightProduct | None = None  # set by SEA.share_weight_products

    def _product(self) -> WeightProduct | None:
        """The shared product while training (every rank runs the same training forward);
        evaluation and no-grad passes stay local, as ranks evaluate different rows."""
        return self.weight_product if self.training and torch.is_grad_enabled() else None

    def gcn_input(self, raw: torch.Tensor) -> torch.Tensor:
        """a_m = W2(leaky_relu(W1 L(x))) for every row."""
        w, b = self.transform.weight, self.transform.bias
        return self.gcn_in_out(F.leaky_relu(linear_after_linear(raw, self.gcn_in_hidden, w, b, self._product())))

    def auxiliary(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(T1(g), T2(u), H(g)) of the rows' z = L(x) = [g, u]."""
        w, b, h, product = self.transform.weight, self.transform.bias, self.half, self._product()
        generic = linear_after_linear(raw, self.club_generic, w[:h], b[:h], product)
        unique = linear_after_linear(raw, self.club_unique, w[h:], b[h:], product)
        projected = None
        if self.projection is not None:
            first = linear_after_linear(raw, self.projection.first, w[:h], b[:h], product)
            projected = self.projection.from_first(first)
        return generic, unique, projected


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

    def share_weight_products(self, product: WeightProduct | None) -> None:
        """Form the folded weights (:func:`linear_after_linear`) with ``product`` in training
        forwards (None: locally). A data-parallel trainer passes one that splits each product
        over its ranks instead of computing it on every rank."""
        for branch in self.branches.values():
            branch.weight_product = product

    def forward(
        self, batch: MiniBatch, input_features: dict[str, torch.Tensor], tables: "UserTables"
    ) -> BatchOutput:
        """The sampled-mode step; ``forward`` so that DDP's hooks see it."""
        return self.forward_batch(batch, input_features, tables)

    def auxiliary_views(self, raw: dict[str, torch.Tensor]) -> AuxiliaryViews:
        """The auxiliary losses' inputs for the given items' raw feature rows."""
        generic, unique, projected = {}, {}, {}
        for m, rows in raw.items():
            generic[m], unique[m], p = self.branches[m].auxiliary(rows)
            if p is not None:
                projected[m] = p
        return AuxiliaryViews(generic, unique, projected)

    # ---- full graph -------------------------------------------------------------------
    def forward_full(
        self, features: dict[str, torch.Tensor], tables: UserTables, graph: FullGraph
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All users' and items' final representations."""
        user_parts, item_parts = [], []
        weights = tables.modality_weights.weight
        for index, m in enumerate(self.modalities):
            a = self.branches[m].gcn_input(features[m])
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
        return torch.cat(user_parts, dim=1), combined + mixed

    # ---- sampled minibatch ------------------------------------------------------------
    def forward_batch(
        self, batch: MiniBatch, input_features: dict[str, torch.Tensor], tables: UserTables
    ) -> BatchOutput:
        """Scores of the batch's triples over its sampled computation graph.

        ``input_features[m]`` holds the raw rows of ``batch.input_items`` in that order.
        """
        n_seed_items = batch.seed_items.numel()
        user_rep, item_rep = self.represent_batch(batch, input_features, tables)
        users = user_rep[batch.batch_user]
        pos = (users * item_rep[batch.batch_pos]).sum(dim=1)
        neg = (users * item_rep[batch.batch_neg]).sum(dim=1)
        # the seed items are the input rows' prefix (DGL block convention)
        views = self.auxiliary_views({m: f[:n_seed_items] for m, f in input_features.items()})
        return BatchOutput(pos, neg, views)

    def represent_batch(
        self, batch: MiniBatch, input_features: dict[str, torch.Tensor], tables: UserTables
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Final representations of ``batch.seed_users`` and ``batch.seed_items`` (the same
        computation as :meth:`forward_full`, over the sampled blocks)."""
        n_seed_items = batch.seed_items.numel()
        user_parts, item_parts = [], []
        weights = tables.modality_weights(batch.seed_users)
        for index, m in enumerate(self.modalities):
            a = self.branches[m].gcn_input(input_features[m])
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
        return torch.cat(user_parts, dim=1), combined[:n_seed_items] + mixed
