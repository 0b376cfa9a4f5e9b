"""Exact partitioned inference: the full-graph representations, computed layer by layer.

Why not sample: a partition stores every interaction edge of its *own* users and items (DGL's
one-hop halo follows the edges both ways), but only some edges of its halo nodes, and no
interaction edge at all of the items it holds only as kNN neighbours. Any per-partition
computation of a halo node is therefore a partial sum. Training tolerates that (it rescales
by full degrees and each node is someone's own node in another partition), but what we
evaluate and publish must be the model itself, i.e. :meth:`SEA.forward_full`.

How: every layer is one sparse product over the edges a partition stores, followed by one
*halo exchange*. After the product, the rows of the partition's own nodes are exact (all
their edges are local, and every row they read was exact after the previous layer); the
other rows are replaced by their owners' values. Every modality travels in the same message
(the operators are the same for all of them), so one layer costs one ``all_to_all`` of
``(halo users + halo items) x (modalities x dim)`` floats per worker, two setup collectives
excepted. The kNN hop(s) reuse the same exchange: every item a partition holds as a DGL
node has its full kNN row in the side file (``graph.partition``).

Memory per worker: four ``local nodes x width`` float32 arrays (current layer and running sum
for users and items) plus the CSR values of the stored edges (4 bytes per edge; the index
arrays are shared with the sampler's graph, not copied).
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from sea_dist.graph.build import ITEM_TO_USER, USER_TO_ITEM
from sea_dist.model.normalization import symmetric_norm
from sea_dist.model.sea import SEA
from sea_dist.runtime.distributed import WorkerContext


@dataclass
class ExchangeStats:
    """What the halo exchanges of one inference moved off this rank, and how long they took."""

    layers: int = 0
    rows_sent: int = 0
    rows_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in vars(self).items()}


class HaloExchange:
    """Replaces the rows of nodes a partition holds but does not own with their owners' rows.

    Built once (two collectives): each rank sends its owners the prepared ids of its non-own
    nodes, and keeps, for every id asked of it, the local row that answers it.
    """

    def __init__(self, global_ids: np.ndarray, own: np.ndarray, offsets: list[int], ctx: WorkerContext):
        self.ctx = ctx
        lo, hi = offsets[ctx.rank], offsets[ctx.rank + 1]
        own_local = np.flatnonzero(own)
        if not np.array_equal(np.sort(global_ids[own_local]), np.arange(lo, hi)):
            raise ValueError(f"rank {ctx.rank}: its own nodes are not exactly the prepared ids [{lo}, {hi})")
        local_of_own = np.empty(hi - lo, dtype=np.int64)
        local_of_own[global_ids[own_local] - lo] = own_local
        halo = np.flatnonzero(~own)
        owners = np.searchsorted(np.asarray(offsets), global_ids[halo], side="right") - 1
        order = np.argsort(owners, kind="stable")
        self.halo_rows = torch.from_numpy(halo[order])
        asked = torch.from_numpy(np.bincount(owners, minlength=ctx.world_size).astype(np.int64))
        self.ask_counts = asked.tolist()
        self.serve_counts = ctx.exchange_counts(asked).tolist()
        requested = ctx.all_to_all_rows(
            torch.from_numpy(global_ids[halo[order]].astype(np.int64)), self.ask_counts, self.serve_counts
        )
        self.serve_rows = torch.from_numpy(local_of_own[requested.numpy() - lo])

    def fill(self, h: torch.Tensor, stats: ExchangeStats) -> None:
        """In place: ``h``'s non-own rows become their owners' rows of ``h``."""
        started = time.monotonic()
        replies = self.ctx.all_to_all_rows(
            h[self.serve_rows.to(h.device)], self.serve_counts, self.ask_counts
        )
        h[self.halo_rows.to(h.device)] = replies
        me, row_bytes = self.ctx.rank, h.shape[1] * h.element_size()
        sent = sum(self.serve_counts) - self.serve_counts[me]
        received = sum(self.ask_counts) - self.ask_counts[me]
        stats.rows_sent += sent
        stats.rows_received += received
        stats.bytes_sent += sent * row_bytes
        stats.bytes_received += received * row_bytes
        stats.seconds += time.monotonic() - started



def _csr(indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, shape) -> torch.Tensor:
    """A CSR tensor from its parts, without torch's "sparse CSR support is in beta" warning,
    which every worker would otherwise print into the job's log at each evaluation."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(indptr, indices, values, shape)

@dataclass
class LocalOperators:
    """The partition's stored edges as CSR operators (rows = destination nodes), full-graph
    weights: ``user_item`` (users x items), ``item_user`` (items x users), ``item_item``
    (kNN, DGL items' rows; the extras' rows are empty)."""

    user_item: torch.Tensor
    item_user: torch.Tensor
    item_item: torch.Tensor

    @classmethod
    def from_sampler_graph(cls, sampler, knn_rows, knn_cols, knn_weights) -> "LocalOperators":
        """Reuses the sampler's CSC index arrays (in-edges per destination = CSR rows)."""
        g = sampler.ui_graph
        n = {"user": g.num_nodes("user"), "item": g.num_nodes("item")}
        degree = {"user": sampler.user_degree, "item": sampler.item_degree}
        ops = {}
        for src_type, etype, dst_type in (USER_TO_ITEM, ITEM_TO_USER):
            indptr, indices, _ = g.adj_tensors("csc", etype=etype)
            dst = torch.repeat_interleave(torch.arange(n[dst_type]), indptr[1:] - indptr[:-1])
            values = symmetric_norm(degree[src_type][indices], degree[dst_type][dst])
            ops[dst_type] = _csr(indptr, indices, values, (n[dst_type], n[src_type]))
        order = torch.argsort(knn_rows * n["item"] + knn_cols)
        knn_rows, knn_cols = knn_rows[order], knn_cols[order]
        ptr = torch.searchsorted(knn_rows, torch.arange(n["item"] + 1))
        knn = _csr(ptr, knn_cols, knn_weights[order].float(), (n["item"], n["item"]))
        return cls(user_item=ops["user"], item_user=ops["item"], item_item=knn)

    def to(self, device) -> "LocalOperators":
        return LocalOperators(self.user_item.to(device), self.item_user.to(device), self.item_item.to(device))


@dataclass
class ExactEmbeddings:
    """Own users' and own items' final representations (local order of ``own_*_local``)."""

    users: torch.Tensor
    items: torch.Tensor
    exchange: ExchangeStats = field(default_factory=ExchangeStats)


@torch.no_grad()
def exact_partition_embeddings(
    model: SEA,
    operators: LocalOperators,
    users: HaloExchange,
    items: HaloExchange,
    own_users_local: np.ndarray,
    own_users_global: torch.Tensor,
    own_items_local: np.ndarray,
    n_local_users: int,
    n_local_items: int,
    features_of,
    user_rows,
    chunk: int = 16384,
) -> ExactEmbeddings:
    """``forward_full``'s representations of this partition's own users and items.

    ``features_of(local item indices) -> {modality: raw rows}`` reads own items' features;
    ``user_rows(prepared user ids) -> ([preferences per modality], modality weights)`` the
    own users' table rows. Every rank must call this together (halo exchanges).
    """
    stats = ExchangeStats()
    device = operators.user_item.device
    modalities, dim = model.modalities, model.cfg.embedding_dim
    width = dim * len(modalities)
    h_item = torch.zeros(n_local_items, width, device=device)
    for start in range(0, len(own_items_local), chunk):
        local = own_items_local[start : start + chunk]
        raw = features_of(local)
        rows = torch.from_numpy(local).to(device)
        h_item[rows] = torch.cat([F.normalize(model.branches[m].gcn_input(raw[m])) for m in modalities], dim=1)
    h_user = torch.zeros(n_local_users, width, device=device)
    preferences, weights = user_rows(own_users_global)
    h_user[torch.from_numpy(own_users_local).to(device)] = torch.cat([F.normalize(p) for p in preferences], dim=1)
    items.fill(h_item, stats)
    users.fill(h_user, stats)
    r_user, r_item = h_user.clone(), h_item.clone()
    for _ in range(model.cfg.n_ui_layers):
        h_user, h_item = operators.user_item @ h_item, operators.item_user @ h_user
        users.fill(h_user, stats)
        items.fill(h_item, stats)
        r_user += h_user
        r_item += h_item
        stats.layers += 1
    mixed = r_item
    for _ in range(model.cfg.n_mm_layers):
        mixed = operators.item_item @ mixed
        items.fill(mixed, stats)
        stats.layers += 1
    own_items = torch.from_numpy(own_items_local).to(device)
    own_users = torch.from_numpy(own_users_local).to(device)
    user_rep = r_user[own_users].view(len(own_users_local), len(modalities), dim) * weights.unsqueeze(2)
    return ExactEmbeddings(
        users=user_rep.reshape(len(own_users_local), width),
        items=r_item[own_items] + mixed[own_items],
        exchange=stats,
    )
