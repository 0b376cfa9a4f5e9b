"""Loss terms against numbers worked out by hand."""
import math

import pytest
import torch

from sea_dist.model.losses import (
    GaussianPredictor,
    bpr_loss,
    club_bound,
    club_learning_loss,
    solosim_loss,
)
from sea_dist.model.objective import alignment_pairs


def test_bpr_is_base_two():
    # margins 2 and 0: -log2(sigmoid(2)) = 0.183118..., -log2(1/2) = 1 -> mean 0.591559
    loss = bpr_loss(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0]))
    expected = (-math.log2(1 / (1 + math.exp(-2))) + 1.0) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert loss.item() == pytest.approx(0.591559, abs=1e-6)


def test_bpr_stays_finite_for_huge_negative_margins():
    loss = bpr_loss(torch.tensor([0.0]), torch.tensor([200.0]))
    assert torch.isfinite(loss) and loss.item() == pytest.approx(200 / math.log(2), rel=1e-6)


def test_solosim_on_orthonormal_views():
    # logits = I / 1; row 0: log_softmax = [1, 0] - log(e + 1); diagonal = 1 - log(1 + e)
    views = torch.eye(2)
    loss = solosim_loss(views, views, temperature=1.0)
    assert loss.item() == pytest.approx(-(1 - math.log(1 + math.e)), rel=1e-6)
    # temperature sharpens: logits = I / 0.5 -> diagonal = 2 - log(e^2 + 1)
    loss = solosim_loss(views * 3.0, views, temperature=0.5)  # cosine: scale is irrelevant
    assert loss.item() == pytest.approx(-(2 - math.log(1 + math.e**2)), rel=1e-6)


def _identity_predictor(logvar_bias: float = 0.0) -> GaussianPredictor:
    """mu(x) = relu(x) (= x for positive x), logvar(x) = tanh(logvar_bias)."""
    q = GaussianPredictor(1, 1, 1)
    with torch.no_grad():
        for layer in (q.mu[0], q.mu[2]):
            layer.weight.fill_(1.0)
            layer.bias.zero_()
        for layer in (q.logvar[0], q.logvar[2]):
            layer.weight.zero_()
            layer.bias.zero_()
        q.logvar[2].bias.fill_(logvar_bias)
    return q


def test_club_bound_by_hand():
    q = _identity_predictor()
    x = torch.tensor([[1.0], [3.0]])
    y = torch.tensor([[1.0], [3.0]])
    # positive: mu = y exactly -> [0, 0]; negative with y swapped: -(1-3)^2/2 = -2 each
    # bound = mean(pos - neg) / 2 = 2 / 2 = 1
    assert club_bound(q, x, y, torch.tensor([1, 0])).item() == pytest.approx(1.0)
    # the identity permutation gives pos == neg: bound 0; the clamp keeps it >= 0
    assert club_bound(q, x, y, torch.tensor([0, 1])).item() == 0.0
    assert club_bound(q, x, y.flip(0), torch.tensor([1, 0])).item() == 0.0


def test_club_learning_loss_by_hand():
    q = _identity_predictor(logvar_bias=math.atanh(0.5))  # logvar = 0.5
    x = torch.tensor([[1.0], [2.0]])
    y = torch.tensor([[2.0], [2.0]])
    # rows: -(1-2)^2/(2e^0.5) - 0.25 and -(0)^2 - 0.25; loss = -mean
    expected = ((1 / (2 * math.exp(0.5)) + 0.25) + 0.25) / 2
    assert club_learning_loss(q, x, y).item() == pytest.approx(expected, rel=1e-6)


def test_alignment_pairs_follow_the_reference():
    assert alignment_pairs(["image"]) == []
    assert alignment_pairs(["image", "text"]) == [("text", "image")]
    assert len(alignment_pairs(["a", "b", "c"])) == 6


def test_alignment_cap_contrasts_a_seeded_subset_and_is_off_by_default():
    from sea_dist.config import ModelConfig
    from sea_dist.model.objective import ClubEstimators, sea_losses
    from sea_dist.model.sea import SEA, AuxiliaryViews

    torch.manual_seed(0)
    model = SEA({"image": 8, "text": 4}, ModelConfig(embedding_dim=4))
    n = 50
    views = AuxiliaryViews(
        {m: torch.randn(n, 32) for m in model.modalities},
        {m: torch.randn(n, 32) for m in model.modalities},
        {m: torch.randn(n, 6) for m in model.modalities},
    )
    scores = (torch.zeros(3), torch.zeros(3))

    def align(cap: int, seed: int) -> float:
        cfg = ModelConfig(embedding_dim=4, align_max_items=cap)
        club = ClubEstimators(model.modalities, cfg)
        terms = sea_losses(model, club, *scores, views, cfg, torch.Generator().manual_seed(seed))
        return float(terms.align) / cfg.alpha_contrast

    full = sum(
        solosim_loss(views.projected[a], views.projected[b], 0.2).item()
        for a, b in alignment_pairs(model.modalities)
    ) / len(alignment_pairs(model.modalities))
    assert align(0, 1) == pytest.approx(full, rel=1e-6)
    assert align(n, 1) == pytest.approx(full, rel=1e-6)  # a cap that does not bind changes nothing
    assert align(10, 1) == pytest.approx(align(10, 1))  # seeded
    assert align(10, 1) != pytest.approx(full, rel=1e-3)
    # the subset's InfoNCE has fewer negatives: its value is bounded by log(10) + margins
    assert align(10, 1) < full
