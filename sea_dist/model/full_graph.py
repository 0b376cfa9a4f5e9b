"""Whole-graph propagation operators for the full-graph mode and for layer-wise inference.

Plain torch sparse matrices (CSR), built from edge lists with the same weights
(:mod:`sea_dist.model.normalization`) as the sampled path, so the two can be compared.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from sea_dist.model.normalization import symmetric_norm


def _csr(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        coo = torch.sparse_coo_tensor(torch.stack([rows, cols]), values, shape)
        return coo.coalesce().to_sparse_csr()


@dataclass
class FullGraph:
    """``user_item[u, i]`` and ``item_user[i, u]``: the normalised bipartite operator A split
    by destination type; ``item_item[i, j]``: the mixed kNN graph S (row i = i's neighbours)."""

    n_users: int
    n_items: int
    user_item: torch.Tensor
    item_user: torch.Tensor
    item_item: torch.Tensor

    @classmethod
    def from_edges(
        cls,
        n_users: int,
        n_items: int,
        ui_users: torch.Tensor,
        ui_items: torch.Tensor,
        knn_rows: torch.Tensor,
        knn_cols: torch.Tensor,
        knn_weights: torch.Tensor,
    ) -> "FullGraph":
        user_degree = torch.bincount(ui_users, minlength=n_users)
        item_degree = torch.bincount(ui_items, minlength=n_items)
        norm = symmetric_norm(user_degree[ui_users], item_degree[ui_items])
        return cls(
            n_users=n_users,
            n_items=n_items,
            user_item=_csr(ui_users, ui_items, norm, (n_users, n_items)),
            item_user=_csr(ui_items, ui_users, norm, (n_items, n_users)),
            item_item=_csr(knn_rows, knn_cols, knn_weights.float(), (n_items, n_items)),
        )

    def to(self, device) -> "FullGraph":
        return FullGraph(
            self.n_users,
            self.n_items,
            self.user_item.to(device),
            self.item_user.to(device),
            self.item_item.to(device),
        )
