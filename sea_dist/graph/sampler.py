"""DGL neighbour sampling of SEA's computation graph for a batch of triples.

For the batch's users and items SEA needs, from the outside in:
1. the item-item hop(s): each seed item aggregates its kNN neighbours' fused representations;
2. two user-item hops: every node whose representation is needed (batch users, seed items
   and their kNN neighbours) aggregates its interaction neighbours, twice.

DGL samples each hop (``sample_neighbors`` + ``to_block``) on CPU; the result is converted to
plain tensors (:class:`~sea_dist.model.blocks.MiniBatch`) with edge weights that combine the
full-graph normalisation with the unbiased rescale ``deg(dst) / sampled(dst)`` (1 where a
node kept all its neighbours). With fanouts >= the largest degree this is exactly the
full-graph computation.
"""
from __future__ import annotations

import copy

import torch

from sea_dist.graph.build import ITEM_TO_USER, USER_TO_ITEM, TrainGraph
from sea_dist.graph.dgl_compat import dgl
from sea_dist.model.blocks import MiniBatch, Relation, UserItemHop
from sea_dist.model.normalization import symmetric_norm


def _unbiased_scale(dst: torch.Tensor, n_dst: int, full_degree: torch.Tensor) -> torch.Tensor:
    """Per edge ``deg(dst) / (edges sampled into dst)``."""
    sampled = torch.bincount(dst, minlength=n_dst).clamp_min(1)
    return full_degree.float() / sampled.float()[dst]


class BatchSampler:
    """Samples :class:`MiniBatch` computation graphs from a :class:`TrainGraph`."""

    def __init__(
        self,
        graph: TrainGraph,
        fanouts: list[int],
        knn_fanout: int = -1,
        n_mm_layers: int = 1,
        user_degree: torch.Tensor | None = None,
        item_degree: torch.Tensor | None = None,
    ):
        """``user_degree``/``item_degree`` override the degrees counted from ``graph``: a
        partition's graph holds part of the edges, its normalisation uses the full graph's."""
        if any(f == 0 or f < -1 for f in list(fanouts) + [knn_fanout]):
            raise ValueError(f"fanouts must be positive or -1 (all), got {fanouts}, {knn_fanout}")
        self.fanouts = list(fanouts)  # outer hop first
        self.knn_fanout = knn_fanout
        self.n_mm_layers = n_mm_layers
        self.user_degree = graph.user_degree if user_degree is None else torch.as_tensor(user_degree)
        self.item_degree = graph.item_degree if item_degree is None else torch.as_tensor(item_degree)
        self.knn_row_size = torch.bincount(graph.knn_rows, minlength=graph.n_items)
        self.knn_weights = graph.knn_weights.float()
        # Sampling in-neighbours reads only the CSC format: keeping that one alone (instead of
        # COO + CSC) halves the graphs' memory, which at catalog scale is most of a worker's.
        self.ui_graph = dgl.heterograph(
            {
                USER_TO_ITEM: (graph.ui_users, graph.ui_items),
                ITEM_TO_USER: (graph.ui_items, graph.ui_users),
            },
            num_nodes_dict={"user": graph.n_users, "item": graph.n_items},
        ).formats("csc")
        # Edge j -> i for "i lists j among its neighbours"; edge ids = positions in TrainGraph.
        self.knn_graph = dgl.graph((graph.knn_cols, graph.knn_rows), num_nodes=graph.n_items).formats("csc")

    def with_fanouts(self, fanouts: list[int], knn_fanout: int = -1) -> "BatchSampler":
        """The same graphs (shared, not copied) sampled with other fanouts (e.g. inference)."""
        other = copy.copy(self)
        other.fanouts, other.knn_fanout = list(fanouts), knn_fanout
        return other

    def sample(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> MiniBatch:
        n = users.numel()
        seed_users, batch_user = torch.unique(users, return_inverse=True)
        seed_items, item_index = torch.unique(torch.cat([pos, neg]), return_inverse=True)
        return self._sample(seed_users, seed_items, batch_user, item_index[:n], item_index[n:])

    def sample_nodes(self, users: torch.Tensor, items: torch.Tensor) -> MiniBatch:
        """The computation graph of given (unique, sorted) users and items, for inference."""
        empty = torch.zeros(0, dtype=torch.int64)
        return self._sample(users, items, empty, empty, empty)

    def _sample(self, seed_users, seed_items, batch_user, batch_pos, batch_neg) -> MiniBatch:
        knn_hops: list[Relation] = []
        frontier = seed_items
        for _ in range(self.n_mm_layers):
            relation, frontier = self._knn_hop(frontier)
            knn_hops.insert(0, relation)

        ui_hops: list[UserItemHop] = []
        seeds = {"user": seed_users, "item": frontier}
        for fanout in self.fanouts:
            hop, seeds = self._user_item_hop(seeds, fanout)
            ui_hops.insert(0, hop)

        return MiniBatch(
            input_items=seeds["item"],
            input_users=seeds["user"],
            ui_hops=ui_hops,
            knn_hops=knn_hops,
            seed_users=seed_users,
            seed_items=seed_items,
            batch_user=batch_user,
            batch_pos=batch_pos,
            batch_neg=batch_neg,
        )

    def _knn_hop(self, items: torch.Tensor) -> tuple[Relation, torch.Tensor]:
        frontier = dgl.sampling.sample_neighbors(self.knn_graph, items, self.knn_fanout)
        block = dgl.to_block(frontier, dst_nodes=items)
        src, dst = block.edges()
        # block.edata[EID] indexes the frontier's edges; the frontier's EID the graph's.
        weight = self.knn_weights[frontier.edata[dgl.EID][block.edata[dgl.EID]]]
        if self.knn_fanout != -1:
            weight = weight * _unbiased_scale(dst, items.numel(), self.knn_row_size[items][dst])
        relation = Relation(src, dst, weight, items.numel())
        return relation, block.srcdata[dgl.NID]

    def _user_item_hop(
        self, seeds: dict[str, torch.Tensor], fanout: int
    ) -> tuple[UserItemHop, dict[str, torch.Tensor]]:
        frontier = dgl.sampling.sample_neighbors(
            self.ui_graph, seeds, {USER_TO_ITEM[1]: fanout, ITEM_TO_USER[1]: fanout}
        )
        block = dgl.to_block(frontier, dst_nodes=seeds)
        src_ids = {t: block.srcnodes[t].data[dgl.NID] for t in ("user", "item")}
        relations = {}
        for src_type, etype, dst_type in (USER_TO_ITEM, ITEM_TO_USER):
            src, dst = block.edges(etype=etype)
            degree = {"user": self.user_degree, "item": self.item_degree}
            dst_degree = degree[dst_type][seeds[dst_type][dst]]
            weight = symmetric_norm(degree[src_type][src_ids[src_type][src]], dst_degree)
            if fanout != -1:
                weight = weight * _unbiased_scale(dst, seeds[dst_type].numel(), dst_degree)
            relations[etype] = Relation(src, dst, weight, seeds[dst_type].numel())
        hop = UserItemHop(relations[USER_TO_ITEM[1]], relations[ITEM_TO_USER[1]])
        return hop, src_ids
