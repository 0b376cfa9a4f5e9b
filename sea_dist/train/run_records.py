"""What the loop books per epoch and per run: plain data and the lines and records made from it.

:class:`Progress` is what a checkpoint restores besides the parameters; :class:`EpochTimes`
where an epoch's seconds went; an epoch's record goes to metrics.jsonl, the Ray report and the
summary's history, its line to the console.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

LOSS_TERMS = ("total", "bpr", "club", "align")


@dataclass
class Progress:
    """What a checkpoint restores besides the parameters (plain data: checkpoint-safe)."""

    next_epoch: int = 0
    best_epoch: int = -1
    best_score: float = -math.inf
    bad_epochs: int = 0
    best_valid: dict = field(default_factory=dict)
    best_test: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    # set by a mid-epoch checkpoint: {"epoch", "next_step", "sums", "times"}
    partial_epoch: dict = field(default_factory=dict)


@dataclass
class EpochTimes:
    sampling_s: float = 0.0  # DGL sampling and block conversion
    feature_fetch_s: float = 0.0  # gathering the batch's raw feature rows
    model_s: float = 0.0
    club_fit_s: float = 0.0
    input_wait_s: float = 0.0  # the step loop waiting for prepared inputs (prefetch fell behind)
    eval_s: float = 0.0
    train_s: float = 0.0
    edges: int = 0
    steps: int = 0

    def add(self, other: "EpochTimes") -> None:
        for name in asdict(other):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def epoch_record(epoch: int, losses: dict, valid: dict, test: dict, best_epoch: int, times: EpochTimes) -> dict:
    return {
        "epoch": epoch,
        "loss": losses,
        "valid": valid,
        "test": test,
        "best_epoch": best_epoch,
        "train_s": round(times.train_s, 3),
        "sampling_s": round(times.sampling_s, 3),
        "feature_fetch_s": round(times.feature_fetch_s, 3),
        "model_s": round(times.model_s, 3),
        "club_fit_s": round(times.club_fit_s, 3),
        "input_wait_s": round(times.input_wait_s, 3),
        "eval_s": round(times.eval_s, 3),
        "train_edges_per_s": times.edges / max(times.train_s, 1e-9),
        "steps": times.steps,
    }


def throughput(totals: EpochTimes, edges: torch.Tensor, epochs_here: int) -> dict:
    """The summary's throughput: ``edges`` is every worker's trained edge count (gathered)."""
    epochs_here = max(epochs_here, 1)
    train_s = max(totals.train_s, 1e-9)
    return {
        "train_edges_per_s": float(edges.sum()) / train_s,
        "train_edges_per_s_per_worker": float(edges.mean()) / train_s,
        "sampling_s_per_epoch": totals.sampling_s / epochs_here,
        "feature_fetch_s_per_epoch": totals.feature_fetch_s / epochs_here,
        "model_s_per_epoch": totals.model_s / epochs_here,
        "club_fit_s_per_epoch": totals.club_fit_s / epochs_here,
        "input_wait_s_per_epoch": totals.input_wait_s / epochs_here,
        "eval_s_per_epoch": totals.eval_s / epochs_here,
        "train_s_per_epoch": totals.train_s / epochs_here,
    }


def epoch_line(epoch: int, losses: dict, metric: str, score: float, test: dict, times: EpochTimes, improved: bool) -> str:
    """The one console line per epoch (``*``: a new best epoch)."""
    return (
        f"epoch {epoch:4d} | loss {losses['total']:.4f} (bpr {losses['bpr']:.4f} "
        f"club {losses['club']:.4f} align {losses['align']:.4f}) | valid {metric} "
        f"{score:.4f} | test {metric} {test[metric]:.4f} | "
        f"{times.train_s:.1f}s train, {times.eval_s:.1f}s eval"
        + (" *" if improved else "")
    )
