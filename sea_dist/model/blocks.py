"""The computation graph of one minibatch, as plain torch tensors.

The sampler (``sea_dist.graph.sampler``, the only DGL user) turns DGL blocks into these
structures so that the model never sees a DGL object: message passing is a sparse CSR matrix
product on whatever device the worker has, which is what lets the CPU-only DGL wheel drive GPU
training.

Conventions follow DGL blocks: in every hop the destination nodes are a prefix of the source
nodes (of the same type), so a node's own value from the previous layer is ``h[:n_dst]``.
Edge weights already include the normalisation and the unbiased-sampling rescale.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from sea_dist.model.full_graph import _csr


@dataclass
class Relation:
    """Weighted edges ``src -> dst`` of one relation in one hop (local indices)."""

    src: torch.Tensor  # int64 [E] index into the hop's source nodes of the source type
    dst: torch.Tensor  # int64 [E] index into the hop's destination nodes of the dest type
    weight: torch.Tensor  # float32 [E]
    n_dst: int

    def aggregate(self, h_src: torch.Tensor) -> torch.Tensor:
        """``out[d] = sum_e weight[e] * h_src[src[e]]`` over edges into ``d``.

        One fused sparse (CSR) x dense product rather than gather, multiply and ``index_add_``:
        2.4x faster forward + backward on a 2.2M-edge hop on one CPU core (the hop sizes of
        the catalog tier), where the three-step form was ~40% of a training step.
        """
        if not self.src.numel():
            return h_src.new_zeros((self.n_dst, h_src.shape[1]))
        if h_src.device.type == "cpu" and h_src.dtype not in (torch.float32, torch.float64):
            h_src = h_src.float()  # CPU sparse kernels have no bf16/fp16 (train.precision=bf16)
        n_src = max(int(h_src.shape[0]), 1)
        operator = self._operators.get(n_src)
        if operator is None:  # built once per relation and source count (modalities share it)
            operator = _csr(self.dst, self.src, self.weight.to(h_src.dtype), (self.n_dst, n_src))
            self._operators[n_src] = operator
        with torch.autocast(h_src.device.type, enabled=False):  # the operator's dtype is h_src's
            return operator @ h_src

    @property
    def _operators(self) -> dict:
        cache = self.__dict__.get("_csr_cache")
        if cache is None:
            cache = self.__dict__["_csr_cache"] = {}
        return cache

    def to(self, device: torch.device | str) -> "Relation":
        return Relation(
            self.src.to(device), self.dst.to(device), self.weight.to(device), self.n_dst
        )


@dataclass
class UserItemHop:
    """One user<->item propagation step: items aggregate users and users aggregate items."""

    user_to_item: Relation  # dst = the hop's destination items
    item_to_user: Relation  # dst = the hop's destination users

    def to(self, device) -> "UserItemHop":
        return UserItemHop(self.user_to_item.to(device), self.item_to_user.to(device))


@dataclass
class MiniBatch:
    """Everything the model needs for one batch of (user, positive, negative) triples.

    Layers, innermost first: ``input_items``/``input_users`` are the global ids whose raw
    features / table rows feed the GCN; ``ui_hops[0]`` maps them to the first hop's
    destinations, ``ui_hops[-1]`` ends at the representation nodes (batch users + every item
    the item-item hops need); ``knn_hops`` (innermost first) then end at the seed items.
    """

    input_items: torch.Tensor  # int64 global item ids, prefix = the representation items
    input_users: torch.Tensor  # int64 global user ids, prefix = the batch's unique users
    ui_hops: list[UserItemHop]
    knn_hops: list[Relation]
    seed_users: torch.Tensor  # int64 global ids of the batch's unique users
    seed_items: torch.Tensor  # int64 global ids of the batch's unique items (pos and neg)
    batch_user: torch.Tensor  # int64 [B] index into seed_users
    batch_pos: torch.Tensor  # int64 [B] index into seed_items
    batch_neg: torch.Tensor  # int64 [B] index into seed_items

    def to(self, device) -> "MiniBatch":
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                moved[f.name] = value.to(device)
            elif isinstance(value, list):
                moved[f.name] = [v.to(device) for v in value]
            else:
                moved[f.name] = value
        return MiniBatch(**moved)

    @property
    def num_edges(self) -> int:
        """Edges touched by the batch's message passing (a throughput unit)."""
        total = sum(h.user_to_item.src.numel() + h.item_to_user.src.numel() for h in self.ui_hops)
        return total + sum(r.src.numel() for r in self.knn_hops)
