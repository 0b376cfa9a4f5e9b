"""The training graph: user-item interactions of the train split plus the item-item kNN graph.

One :class:`TrainGraph` feeds both modes: :meth:`TrainGraph.full_graph` gives the plain-torch
operators of the full-graph mode, :meth:`TrainGraph.to_dgl` the DGL heterograph the sampler
draws from. Degrees are always those of the whole training graph.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from sea_dist.config import GraphConfig
from sea_dist.graph.dgl_compat import dgl
from sea_dist.graph.knn import mixed_knn_graph
from sea_dist.model.full_graph import FullGraph
from sea_dist.model.normalization import modality_mix_weights

log = logging.getLogger(__name__)

# Relation names of the DGL heterograph (canonical edge types).
USER_TO_ITEM = ("user", "interacts", "item")
ITEM_TO_USER = ("item", "interacted_by", "user")
ITEM_TO_ITEM = ("item", "knn", "item")  # src = neighbour j, dst = item i (i aggregates j)


@dataclass
class TrainGraph:
    n_users: int
    n_items: int
    ui_users: torch.Tensor  # int64 [E] train edges
    ui_items: torch.Tensor
    knn_rows: torch.Tensor  # int64: item i ...
    knn_cols: torch.Tensor  # ... has neighbour j
    knn_weights: torch.Tensor  # float32 S[i, j]

    @property
    def user_degree(self) -> torch.Tensor:
        return torch.bincount(self.ui_users, minlength=self.n_users)

    @property
    def item_degree(self) -> torch.Tensor:
        return torch.bincount(self.ui_items, minlength=self.n_items)

    def full_graph(self) -> FullGraph:
        return FullGraph.from_edges(
            self.n_users,
            self.n_items,
            self.ui_users,
            self.ui_items,
            self.knn_rows,
            self.knn_cols,
            self.knn_weights,
        )

    def to_dgl(self):
        """Heterograph with user<->item relations and the kNN relation (edata ``w`` = S)."""
        g = dgl.heterograph(
            {
                USER_TO_ITEM: (self.ui_users, self.ui_items),
                ITEM_TO_USER: (self.ui_items, self.ui_users),
                ITEM_TO_ITEM: (self.knn_cols, self.knn_rows),
            },
            num_nodes_dict={"user": self.n_users, "item": self.n_items},
        )
        g.edges[ITEM_TO_ITEM].data["w"] = self.knn_weights.float()
        g.nodes["user"].data["deg"] = self.user_degree
        g.nodes["item"].data["deg"] = self.item_degree
        return g


def build_train_graph(
    n_users: int,
    n_items: int,
    train_users: np.ndarray,
    train_items: np.ndarray,
    features: dict[str, np.ndarray],
    cfg: GraphConfig,
) -> TrainGraph:
    started = time.monotonic()
    mix = modality_mix_weights(list(features), cfg.mm_image_weight, cfg.modality_weights)
    rows, cols, weights = mixed_knn_graph(features, cfg.knn_k, mix, cfg.knn_block_size)
    log.info(
        "graph: %d users, %d items, %d train edges, %d kNN edges (k=%d, mix=%s) in %.1fs",
        n_users,
        n_items,
        len(train_users),
        rows.numel(),
        cfg.knn_k,
        [round(w, 3) for w in mix],
        time.monotonic() - started,
    )
    return TrainGraph(
        n_users=n_users,
        n_items=n_items,
        ui_users=torch.as_tensor(np.asarray(train_users, dtype=np.int64)),
        ui_items=torch.as_tensor(np.asarray(train_items, dtype=np.int64)),
        knn_rows=rows,
        knn_cols=cols,
        knn_weights=weights,
    )
