"""Edge weights of SEA's two graphs, shared by the full-graph and the sampled paths.

Both paths must weight an edge identically (full-graph degrees, never sampled ones), or the
sampled mode would estimate a different model; keeping the formulas here makes that one fact.
"""
from __future__ import annotations

import torch

# The reference adds this to kNN row sums before the inverse square root (SEA.py,
# compute_normalized_laplacian); we keep it so full-graph numbers match to float precision.
KNN_ROW_SUM_EPS = 1e-7


def symmetric_norm(src_degree: torch.Tensor, dst_degree: torch.Tensor) -> torch.Tensor:
    """``deg(dst)^-1/2 * deg(src)^-1/2`` per edge (the DRAGON GCN's operator).

    Degrees are of the *training* user-item graph; an edge exists only between nodes of
    degree >= 1, so there is no division by zero.
    """
    return src_degree.float().rsqrt() * dst_degree.float().rsqrt()


def knn_edge_weights(rows: torch.Tensor, cols: torch.Tensor, n_items: int) -> torch.Tensor:
    """Weights ``1/sqrt(r_i r_j)`` of a binary kNN graph, ``r`` its row sums (+ eps).

    ``rows[e]`` is the item whose neighbour list contains ``cols[e]``. With exactly k
    neighbours per row every weight is ``1/(k + eps)``.
    """
    row_sum = torch.bincount(rows, minlength=n_items).float() + KNN_ROW_SUM_EPS
    inv_sqrt = row_sum.rsqrt()
    return inv_sqrt[rows] * inv_sqrt[cols]


def modality_mix_weights(
    modalities: list[str], mm_image_weight: float, explicit: list[float] | None = None
) -> list[float]:
    """Per-modality weights of the mixed item-item graph ``S = sum_m w_m S_m``.

    Two modalities reproduce the reference (first = its image modality, weight
    ``mm_image_weight``); any other count uses equal weights unless given explicitly.
    """
    if explicit:
        if len(explicit) != len(modalities):
            raise ValueError(
                f"graph.modality_weights has {len(explicit)} values for "
                f"{len(modalities)} modalities {modalities}"
            )
        return [float(w) for w in explicit]
    if len(modalities) == 2:
        return [float(mm_image_weight), 1.0 - float(mm_image_weight)]
    return [1.0 / len(modalities)] * len(modalities)
