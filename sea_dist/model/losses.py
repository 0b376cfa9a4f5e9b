"""SEA's loss terms, as pure functions (see docs/model.md, "Losses").

Kept free of module state so each can be checked against hand-computed numbers.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_LN2 = math.log(2.0)


def bpr_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """``-mean(log2(sigmoid(pos - neg)))``: the reference's base-2 BPR.

    Computed as ``logsigmoid / ln 2``, equal to the reference's ``log2(sigmoid(.))`` where
    that is finite and free of its ``-inf`` for very negative margins.
    """
    return -(F.logsigmoid(pos_scores - neg_scores) / _LN2).mean()


def solosim_loss(view1: torch.Tensor, view2: torch.Tensor, temperature: float) -> torch.Tensor:
    """One-directional InfoNCE over cosine logits; positives are the same row (same item)."""
    view1 = F.normalize(view1, dim=1)
    view2 = F.normalize(view2, dim=1)
    logits = view1 @ view2.T / temperature
    return -torch.diagonal(F.log_softmax(logits, dim=1)).mean()


class GaussianPredictor(nn.Module):
    """CLUB's variational net Q: a diagonal Gaussian ``N(mu(p), exp(logvar(p)))`` for q."""

    def __init__(self, x_dim: int, y_dim: int, hidden: int):
        super().__init__()
        self.mu = nn.Sequential(nn.Linear(x_dim, hidden), nn.ReLU(), nn.Linear(hidden, y_dim))
        self.logvar = nn.Sequential(
            nn.Linear(x_dim, hidden), nn.ReLU(), nn.Linear(hidden, y_dim), nn.Tanh()
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mu(x), self.logvar(x)


def gaussian_log_likelihood(
    mu: torch.Tensor, logvar: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """Per-row ``sum_d -(mu - y)^2 / (2 exp(logvar)) - logvar / 2`` (constants dropped)."""
    return (-((mu - y) ** 2) / logvar.exp() / 2.0 - logvar / 2.0).sum(dim=1)


def club_bound(
    q_net: GaussianPredictor, x: torch.Tensor, y: torch.Tensor, permutation: torch.Tensor
) -> torch.Tensor:
    """CLUB upper bound of I(x; y): ``max(0, mean(pos - neg) / 2)``, neg on permuted y."""
    mu, logvar = q_net(x)
    positive = gaussian_log_likelihood(mu, logvar, y)
    negative = gaussian_log_likelihood(mu, logvar, y[permutation])
    return torch.clamp((positive - negative).mean() / 2.0, min=0.0)


def club_learning_loss(q_net: GaussianPredictor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Negative mean log-likelihood: what Q's own optimizer minimises."""
    mu, logvar = q_net(x)
    return -gaussian_log_likelihood(mu, logvar, y).mean()
