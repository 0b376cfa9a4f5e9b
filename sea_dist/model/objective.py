"""SEA's training objective: BPR + separation (CLUB) + alignment (Solosim), and Q's fit.

Modality roles follow the reference when there are two modalities: the first modality in
``dataset.json`` order plays its *image* role and the second its *text* role (alignment
logits are text x image; the published Q fit goes text -> image).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from sea_dist.config import ModelConfig
from sea_dist.model.club_fit import Pair, fit_club
from sea_dist.model.losses import (
    GaussianPredictor,
    bpr_loss,
    club_bound,
    solosim_loss,
)
from sea_dist.model.sea import SEA, AuxiliaryViews

log = logging.getLogger(__name__)

CLUB_FIT_MODES = ("as_published", "within_modality")


class ClubEstimators(nn.Module):
    """The variational net(s) Q of the CLUB bound.

    ``as_published``: one Q shared by all modalities (as in the authors' code);
    ``within_modality``: one Q per modality. Q is never in the main optimizer.
    """

    def __init__(self, modalities: list[str], cfg: ModelConfig):
        super().__init__()
        if cfg.club_fit not in CLUB_FIT_MODES:
            raise ValueError(f"model.club_fit must be one of {CLUB_FIT_MODES}, got {cfg.club_fit!r}")
        self.mode = cfg.club_fit
        self.modalities = list(modalities)
        names = ["shared"] if self.mode == "as_published" else self.modalities
        self.nets = nn.ModuleDict(
            {n: GaussianPredictor(cfg.club_dim, cfg.club_dim, cfg.club_hidden) for n in names}
        )
        if self.mode == "as_published" and len(modalities) != 2:
            log.info(
                "club_fit=as_published with %d modalities: the shared Q is fitted on each "
                "modality's own (generic, unique) pairs (the cross-modal quirk needs two)",
                len(modalities),
            )

    def net_for(self, modality: str) -> GaussianPredictor:
        return self.nets["shared" if self.mode == "as_published" else modality]

    def fitting_pairs(self, generic: dict[str, torch.Tensor], unique: dict[str, torch.Tensor]) -> list[Pair]:
        """(Q, x, y) triples Q is fitted on; tensors are detached here."""
        if self.mode == "as_published" and len(self.modalities) == 2:
            image, text = self.modalities
            net = self.nets["shared"]
            return [
                (net, generic[text].detach(), generic[image].detach()),
                (net, unique[text].detach(), unique[image].detach()),
            ]
        return [(self.net_for(m), generic[m].detach(), unique[m].detach()) for m in self.modalities]


class RowGatherer(Protocol):
    """What :func:`gather_fitting_pairs` needs from the caller's worker group (the training
    loop's ``WorkerContext`` is one): rows of every worker, concatenated in rank order."""

    def all_gather_rows(self, tensor: torch.Tensor) -> torch.Tensor: ...


class Workers(RowGatherer, Protocol):
    """What :func:`fit_club_step` needs to share the rows out (``WorkerContext`` has it)."""

    rank: int
    world_size: int

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor: ...


def gather_fitting_pairs(
    pairs: list[Pair], workers: RowGatherer, merge_duplicates: bool = True
) -> tuple[list[Pair], torch.Tensor | None]:
    """Every worker's rows of ``pairs`` (same Q's, same order), in one collective, and the
    rows' weights (None: all 1).

    All pairs come from one batch's items, so they have equal row counts: x and y of every
    pair travel side by side in one [rows, sum of widths] tensor (a few MB per step).
    ``merge_duplicates``: workers' batches share items (on a small catalog most of them: 2
    workers on the default dataset send 2,450 rows for 1,670 items), and an item's rows are
    the same on every worker, so identical gathered rows are fitted once with their count as
    weight: the same loss (a weighted mean), the fit's cost no longer grows with the number
    of workers. Every worker merges the same gathered tensor alike, so replicas stay equal.
    """
    if not pairs:
        return pairs, None
    tensors = [t.detach() for _, x, y in pairs for t in (x, y)]
    if len({t.shape[0] for t in tensors}) != 1 or any(t.dim() != 2 for t in tensors):
        raise ValueError("gather_fitting_pairs: the pairs' x and y must be 2-D with equal row counts")
    gathered = workers.all_gather_rows(torch.cat(tensors, dim=1))
    weights = None
    if merge_duplicates:
        gathered, weights = merge_identical_rows(gathered)
    parts = torch.split(gathered, [t.shape[1] for t in tensors], dim=1)
    return [(net, parts[2 * i], parts[2 * i + 1]) for i, (net, _, _) in enumerate(pairs)], weights


def merge_identical_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(distinct rows, how often each occurs), or (rows, None) when all are distinct.

    Rows are keyed by the bits of their first two values (a cheap 1-D unique) and every row is
    then checked against its key's first row; any mismatch (two rows sharing leading values)
    falls back to the exact row-wise unique. Distinct rows come out in key order, the same on
    every worker for the same input.
    """
    n = rows.shape[0]
    if n < 2 or rows.dim() != 2 or rows.shape[1] < 2 or rows.dtype != torch.float32:
        return rows, None
    bits = rows[:, :2].contiguous().view(torch.int32).to(torch.int64)
    key = (bits[:, 0] << 32) | (bits[:, 1] & 0xFFFFFFFF)
    keys, inverse, counts = torch.unique(key, return_inverse=True, return_counts=True)
    if keys.shape[0] == n:
        return rows, None
    first = torch.full((keys.shape[0],), n, dtype=torch.int64, device=rows.device)
    first.scatter_reduce_(0, inverse, torch.arange(n, device=rows.device), reduce="amin")
    distinct = rows[first]
    if not torch.equal(distinct[inverse], rows):
        distinct, counts = torch.unique(rows, dim=0, return_counts=True)
        if distinct.shape[0] == n:
            return rows, None
    return distinct, counts.to(rows.dtype)


def fit_club_step(
    club: ClubEstimators,
    generic: dict[str, torch.Tensor],
    unique: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    steps: int,
    workers: Workers | None = None,
    share_rows: bool = False,
    kernel: str = "auto",
) -> float:
    """Q's fit for one training step, as the reference does it after the main backward.

    With ``workers`` (several data-parallel workers) the step's detached pairs are gathered
    once (identical rows merged, see :func:`gather_fitting_pairs`): the mean over all rows
    is what per-inner-step gradient averaging computed. Then either every worker runs the
    same fit on all rows locally (the default: one collective per step, replicas equal
    because inputs and initial state are), or, with ``share_rows``, each worker takes a
    1/world share of the merged rows and the workers sum their gradients at every inner
    step (each worker's arithmetic divided by the world size, one small all-reduce per
    inner step; replicas equal because every worker applies the same summed gradient).
    ``kernel``: how an inner step's gradient is computed (:func:`fit_club`). Returns the last
    inner step's loss (with ``share_rows``, this worker's part of it).
    """
    pairs = club.fitting_pairs(generic, unique)
    if steps <= 0:
        return 0.0  # every worker skips alike (steps is configuration), so no collective either
    if workers is None:
        return fit_club(pairs, optimizer, steps, kernel=kernel)
    pairs, weights = gather_fitting_pairs(pairs, workers)
    if not share_rows or workers.world_size == 1 or not pairs:
        return fit_club(pairs, optimizer, steps, row_weights=weights, kernel=kernel)
    rows = pairs[0][1].shape[0]
    total = float(rows if weights is None else weights.sum())
    lo, hi = rows * workers.rank // workers.world_size, rows * (workers.rank + 1) // workers.world_size
    mine = [(net, x[lo:hi], y[lo:hi]) for net, x, y in pairs]
    return fit_club(
        mine,
        optimizer,
        steps,
        row_weights=None if weights is None else weights[lo:hi],
        rows_in_total=total,
        reduce_gradients=workers.all_reduce_sum,
        kernel=kernel,
    )


@dataclass
class LossTerms:
    total: torch.Tensor
    bpr: torch.Tensor
    club: torch.Tensor
    align: torch.Tensor
    club_generic: dict[str, torch.Tensor]  # T1_m(g_m) of the loss items (Q's fitting data)
    club_unique: dict[str, torch.Tensor]  # T2_m(u_m)

    def as_floats(self) -> dict[str, float]:
        return {
            "total": float(self.total.detach()),
            "bpr": float(self.bpr.detach()),
            "club": float(self.club.detach()),
            "align": float(self.align.detach()),
        }


def alignment_pairs(modalities: list[str]) -> list[tuple[str, str]]:
    """(view1, view2) pairs of the Solosim loss: the reference's text->image for two
    modalities, every ordered pair beyond that, none for one modality."""
    if len(modalities) < 2:
        return []
    if len(modalities) == 2:
        return [(modalities[1], modalities[0])]
    return [(a, b) for a in modalities for b in modalities if a != b]


def sea_losses(
    model: SEA,
    club: ClubEstimators,
    pos_scores: torch.Tensor,
    neg_scores: torch.Tensor,
    views: AuxiliaryViews,
    cfg: ModelConfig,
    generator: torch.Generator | None = None,
) -> LossTerms:
    """All loss terms for one batch; the auxiliary ones run over the rows of ``views``
    (every item in full-graph mode, the batch's items in sampled mode)."""
    bpr = bpr_loss(pos_scores, neg_scores)
    n = next(iter(views.club_generic.values())).shape[0]
    bounds = []
    for m in model.modalities:
        permutation = torch.randperm(n, generator=generator).to(pos_scores.device)
        bounds.append(club_bound(club.net_for(m), views.club_generic[m], views.club_unique[m], permutation))
    club_term = cfg.ureg * torch.stack(bounds).mean()
    pairs = alignment_pairs(model.modalities)
    if pairs:
        projected = views.projected
        rows = next(iter(projected.values())).shape[0]
        if cfg.align_max_items and rows > cfg.align_max_items:
            # InfoNCE over n rows costs n^2: at catalog batch sizes contrast a seeded subset
            keep = torch.randperm(rows, generator=generator)[: cfg.align_max_items].to(pos_scores.device)
            projected = {m: v.index_select(0, keep) for m, v in projected.items()}
        align = torch.stack(
            [solosim_loss(projected[a], projected[b], cfg.temp) for a, b in pairs]
        ).mean()
        align_term = cfg.alpha_contrast * align
    else:
        align_term = bpr.new_zeros(())
    return LossTerms(
        total=bpr + club_term + align_term,
        bpr=bpr,
        club=club_term,
        align=align_term,
        club_generic=views.club_generic,
        club_unique=views.club_unique,
    )
