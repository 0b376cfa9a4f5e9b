"""Sparse, replicated training of the per-user tables across workers.

A step touches only its batch's users (and the users two hops away), so each worker's table
gradient is a sparse tensor of those rows. Workers all-gather (row ids, row gradients) —
traffic grows with the rows touched, not with ``|users|`` — sum duplicates, divide by the
world size (the same averaging DDP applies to dense gradients) and apply the same
``SparseAdam`` step, so every replica stays identical.

SparseAdam is "lazy" Adam: rows without a gradient keep their moments and do not move,
where dense Adam (the reference, full-graph mode) keeps moving them by momentum. That is the
standard trade for sparse embedding training; docs/fidelity.md reports its effect.
"""
from __future__ import annotations

import torch
from torch import nn

from sea_dist.runtime.distributed import WorkerContext


def sparse_embeddings(tables: nn.Module) -> list[nn.Embedding]:
    return [m for m in tables.modules() if isinstance(m, nn.Embedding)]


def synchronize_sparse_gradients(tables: nn.Module, ctx: WorkerContext) -> int:
    """Replace each table's local sparse gradient by the world's average; returns the number
    of gradient rows this worker received (a traffic figure)."""
    rows_moved = 0
    for embedding in sparse_embeddings(tables):
        grad = embedding.weight.grad
        dim = embedding.weight.shape[1]
        if grad is None:
            indices = torch.zeros(0, dtype=torch.int64, device=embedding.weight.device)
            values = embedding.weight.new_zeros((0, dim))
        else:
            if not grad.is_sparse:
                raise ValueError("user tables must be built with sparse=True for sparse sync")
            grad = grad.coalesce()
            indices, values = grad.indices()[0], grad.values()
        if ctx.world_size > 1:
            indices = ctx.all_gather_rows(indices)
            values = ctx.all_gather_rows(values) / ctx.world_size
        rows_moved += int(indices.numel())
        embedding.weight.grad = torch.sparse_coo_tensor(
            indices.unsqueeze(0), values, embedding.weight.shape
        ).coalesce()
    return rows_moved
