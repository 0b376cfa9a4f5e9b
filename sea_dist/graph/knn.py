"""Item-item kNN graphs from raw modality features, in bounded memory.

The reference builds a dense items x items cosine matrix; at catalog size that is terabytes.
Here similarities are computed a block of rows at a time (``block_size x n_items`` floats
live at once) and only each row's top-k survives, which gives exactly the reference's
neighbours (plain ``topk``, self included) for any block size.
"""
from __future__ import annotations

import logging
import time
import warnings

import numpy as np
import torch

from sea_dist.model.normalization import knn_edge_weights

log = logging.getLogger(__name__)


def exact_topk_cosine(
    features: np.ndarray | torch.Tensor, k: int, block_size: int = 4096
) -> torch.Tensor:
    """Indices ``[n, k]`` of each row's k most cosine-similar rows (self included).

    Zero rows have no direction; they are given similarity 0 to everything rather than NaN.
    """
    x = torch.as_tensor(features, dtype=torch.float32)
    n = x.shape[0]
    if k > n:
        raise ValueError(f"knn_k={k} exceeds the number of items ({n})")
    normed = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    out = torch.empty((n, k), dtype=torch.int64)
    started = time.monotonic()
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        sims = normed[start:stop] @ normed.T
        out[start:stop] = torch.topk(sims, k, dim=1).indices
        if n > 4 * block_size and (start // block_size) % 8 == 0:
            log.info("kNN: %d/%d rows (%.1fs)", stop, n, time.monotonic() - started)
    return out


def knn_edges(neighbours: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, cols, weights) of one modality's normalised kNN graph."""
    n, k = neighbours.shape
    rows = torch.arange(n).repeat_interleave(k)
    cols = neighbours.reshape(-1)
    return rows, cols, knn_edge_weights(rows, cols, n)


def mixed_knn_graph(
    features: dict[str, np.ndarray | torch.Tensor],
    k: int,
    mix_weights: list[float],
    block_size: int = 4096,
    search=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``S = sum_m w_m S_m`` as coalesced (rows, cols, weights) edges, sorted by row.

    An (i, j) pair found in several modalities becomes one edge with the summed weight,
    which is what adding the sparse matrices does in the reference. ``search(features, k)``
    returns each item's neighbours (itself first); default: the blocked exact search.
    """
    all_rows, all_cols, all_w = [], [], []
    n_items = None
    for (modality, feats), weight in zip(features.items(), mix_weights):
        neighbours = search(feats, k) if search else exact_topk_cosine(feats, k, block_size)
        rows, cols, w = knn_edges(neighbours)
        n_items = neighbours.shape[0]
        all_rows.append(rows)
        all_cols.append(cols)
        all_w.append(w * weight)
        log.debug("kNN graph for %s: %d edges", modality, rows.numel())
    rows = torch.cat(all_rows)
    cols = torch.cat(all_cols)
    weights = torch.cat(all_w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # sparse invariant-check notice
        coalesced = torch.sparse_coo_tensor(torch.stack([rows, cols]), weights, (n_items, n_items))
        coalesced = coalesced.coalesce()
    indices = coalesced.indices()
    return indices[0].contiguous(), indices[1].contiguous(), coalesced.values().contiguous()
