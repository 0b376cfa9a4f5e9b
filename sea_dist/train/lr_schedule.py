"""Learning rate at catalog batch sizes: scaling with the global batch, and a linear warm-up.

Why: the reference's lr (1e-4) was tuned at its batch of 2,048 triples. A catalog run takes
batches of 8k-131k triples per worker, i.e. 4-500x fewer optimizer steps per epoch at the same
lr, so it learns far less per epoch. The usual remedies: scale the lr with the batch (linear
for SGD-like noise arguments, square root for Adam) and warm up over the first steps so the
larger lr does not blow up the freshly initialised network.

The lr is a pure function of the global step index, so a resumed run sets exactly the lr the
uninterrupted run had; nothing extra goes into checkpoints. With ``lr_scaling="none"`` and no
warm-up it is the constant configured lr, which is the reference protocol.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch

LR_SCALINGS = ("none", "sqrt", "linear")


def scaled_lr(lr: float, global_batch: int, reference_batch: int, scaling: str) -> float:
    """The lr for ``global_batch`` given ``lr`` tuned at ``reference_batch`` (never scaled down)."""
    if scaling not in LR_SCALINGS:
        raise ValueError(f"lr_scaling must be one of {LR_SCALINGS}, got {scaling!r}")
    ratio = max(global_batch / max(reference_batch, 1), 1.0)
    if scaling == "sqrt":
        return lr * math.sqrt(ratio)
    if scaling == "linear":
        return lr * ratio
    return lr


def lr_at(step: int, peak_lr: float, warmup_steps: int) -> float:
    """Linear warm-up from ``peak_lr / warmup_steps`` to ``peak_lr`` over the first
    ``warmup_steps`` optimizer steps (0-based ``step``), then constant."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    return peak_lr


def set_lr(optimizers: Iterable[torch.optim.Optimizer | None], lr: float) -> None:
    for optimizer in optimizers:
        if optimizer is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr
