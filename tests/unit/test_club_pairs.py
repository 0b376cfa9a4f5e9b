"""Which tensors CLUB's Q is fitted on, in both ``model.club_fit`` modes, and that Q is trained
only by its own optimizer.

The authors' trainer fits one shared Q on (text generic -> image generic) and (text unique ->
image unique) — across modalities — while the bound evaluates Q within each modality
(``as_published``); ``within_modality`` fits one Q per modality on the bound's own
(generic -> unique) pairs. Swapping text and image, generic and unique, or the two modes must
fail a test here. The expected fits are written out with the Gaussian likelihood spelled out
in this file, independent of the project's loss helpers.
"""
from __future__ import annotations

import copy

import pytest
import torch

from sea_dist.config import Config, ModelConfig
from sea_dist.model.objective import ClubEstimators, fit_club

MODALITIES = ["image", "text"]  # dataset.json order: image role first, text role second


def _nll(net, x, y):
    """Q's fitting loss, by hand: -mean_rows sum_d [-(mu - y)^2 / (2 e^logvar) - logvar / 2]."""
    mu, logvar = net(x)
    return -((-((mu - y) ** 2) / logvar.exp() / 2.0 - logvar / 2.0).sum(1)).mean()


def _views(rows=6, dim=4, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    make = lambda: torch.randn(rows, dim, generator=g).requires_grad_(requires_grad)  # noqa: E731
    return {m: make() for m in MODALITIES}, {m: make() for m in MODALITIES}


def _club(mode, modalities=MODALITIES, dim=4):
    torch.manual_seed(0)
    return ClubEstimators(modalities, ModelConfig(club_fit=mode, club_dim=dim, club_hidden=6))


def _expected_pairs(club, generic, unique, mode):
    """The pairs each mode must fit, spelled out by modality name."""
    if mode == "as_published":
        q = club.nets["shared"]
        return [(q, generic["text"], generic["image"]), (q, unique["text"], unique["image"])]
    return [(club.nets[m], generic[m], unique[m]) for m in MODALITIES]


# ---- fitting_pairs --------------------------------------------------------------------------
def test_as_published_fits_the_shared_q_text_to_image_across_modalities():
    generic, unique = _views(requires_grad=True)
    club = _club("as_published")
    assert list(club.nets) == ["shared"]
    pairs = club.fitting_pairs(generic, unique)
    assert len(pairs) == 2
    (q1, x1, y1), (q2, x2, y2) = pairs
    assert q1 is q2 is club.nets["shared"]
    assert torch.equal(x1, generic["text"]) and torch.equal(y1, generic["image"])
    assert torch.equal(x2, unique["text"]) and torch.equal(y2, unique["image"])
    assert not any(t.requires_grad for _, x, y in pairs for t in (x, y))  # detached
    # the bound still evaluates the shared Q within each modality
    assert club.net_for("image") is club.net_for("text") is club.nets["shared"]


def test_within_modality_fits_each_modalitys_own_q_generic_to_unique():
    generic, unique = _views(requires_grad=True)
    club = _club("within_modality")
    assert sorted(club.nets) == sorted(MODALITIES) and club.nets["image"] is not club.nets["text"]
    pairs = club.fitting_pairs(generic, unique)
    assert [p[0] for p in pairs] == [club.nets["image"], club.nets["text"]]
    for (q, x, y), m in zip(pairs, MODALITIES):
        assert q is club.net_for(m)  # the Q the bound uses for m is the one fitted on m
        assert torch.equal(x, generic[m]) and torch.equal(y, unique[m])
        assert not x.requires_grad and not y.requires_grad


@pytest.mark.parametrize("modalities", [["image"], ["image", "text", "audio"]])
def test_as_published_without_two_modalities_fits_within_each_modality(modalities):
    g = torch.Generator().manual_seed(1)
    generic = {m: torch.randn(5, 4, generator=g) for m in modalities}
    unique = {m: torch.randn(5, 4, generator=g) for m in modalities}
    club = ClubEstimators(modalities, ModelConfig(club_fit="as_published", club_dim=4, club_hidden=6))
    pairs = club.fitting_pairs(generic, unique)
    assert len(pairs) == len(modalities)
    for (q, x, y), m in zip(pairs, modalities):
        assert q is club.nets["shared"]
        assert torch.equal(x, generic[m]) and torch.equal(y, unique[m])


# ---- fit_club: Q fitted on exactly the mode's pairs -------------------------------------------
def _independent_fit(club, pairs_by_name, steps, lr):
    """Q's parameters after ``steps`` Adam steps on sum(_nll) of the named pairs, on a copy."""
    clone = copy.deepcopy(club)
    opt = torch.optim.Adam(clone.parameters(), lr=lr)
    for _ in range(steps):
        loss = sum(_nll(clone.nets[q], x, y) for q, x, y in pairs_by_name)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {n: p.detach() for n, p in clone.named_parameters()}


def _right_and_wrong_pairs(mode, generic, unique):
    """The mode's pairs by Q name, and the pairings a bug could produce instead."""
    if mode == "as_published":
        right = [("shared", generic["text"], generic["image"]), ("shared", unique["text"], unique["image"])]
        wrong = {
            "image->text": [("shared", generic["image"], generic["text"]), ("shared", unique["image"], unique["text"])],
            "within_modality": [("shared", generic[m], unique[m]) for m in MODALITIES],
        }
    else:
        right = [(m, generic[m], unique[m]) for m in MODALITIES]
        wrong = {
            "unique->generic": [(m, unique[m], generic[m]) for m in MODALITIES],
            "text<->image": [("image", generic["text"], unique["text"]), ("text", generic["image"], unique["image"])],
            "as_published": [("image", generic["text"], generic["image"]), ("text", unique["text"], unique["image"])],
        }
    return right, wrong


def _gaps(after, expected, wrong_fits):
    worst = max((after[n] - expected[n]).abs().max().item() for n in expected)
    gaps = {k: max((after[n] - w[n]).abs().max().item() for n in w) for k, w in wrong_fits.items()}
    return worst, gaps


@pytest.mark.parametrize("mode", ["as_published", "within_modality"])
def test_fit_club_fits_q_on_the_modes_pairs(mode):
    generic, unique = _views(rows=8, seed=3)
    club = _club(mode)
    steps, lr = 5, 0.01
    right, wrong = _right_and_wrong_pairs(mode, generic, unique)
    expected = _independent_fit(club, right, steps, lr)
    wrong_fits = {k: _independent_fit(club, pairs, steps, lr) for k, pairs in wrong.items()}
    fit_club(club.fitting_pairs(generic, unique), torch.optim.Adam(club.parameters(), lr=lr), steps)
    worst, gaps = _gaps({n: p.detach() for n, p in club.named_parameters()}, expected, wrong_fits)
    print(f"{mode}: Q vs the expected fit {worst:.1e}; vs wrong pairings {gaps}")
    assert worst < 1e-6
    assert min(gaps.values()) > 1e-3, gaps  # each wrong pairing is told apart


def test_fit_club_with_zero_steps_leaves_q_alone():
    generic, unique = _views()
    club = _club("as_published")
    before = copy.deepcopy(club.state_dict())
    fit_club(club.fitting_pairs(generic, unique), torch.optim.Adam(club.parameters(), lr=1.0), 0)
    assert all(torch.equal(before[k], v) for k, v in club.state_dict().items())


# ---- through the Trainer: the pairs of a real step, and Q outside the main optimizers ---------
@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    from sea_dist.sources.synthetic import SyntheticSpec, write_synthetic

    spec = SyntheticSpec(n_users=60, n_items=40, n_interactions=600, modalities={"image": 8, "text": 4}, name="club")
    return write_synthetic(spec, str(tmp_path_factory.mktemp("club") / "data"))


def _trainer(root, out, mode, full_graph, inner_steps, steps_per_epoch):
    from sea_dist.runtime.distributed import WorkerContext
    from sea_dist.train.loop import Trainer

    cfg = Config()
    cfg.data.root = root
    cfg.output.output_dir = str(out)
    cfg.train.full_graph = full_graph
    cfg.train.batch_size = 128
    cfg.train.max_steps_per_epoch = steps_per_epoch
    cfg.model.club_fit = mode
    cfg.model.club_inner_steps = inner_steps
    cfg.model.ureg = 50.0  # a bound term large enough that its gradient reaches Q visibly
    return Trainer(cfg, WorkerContext())


def _ids(params):
    return {id(p) for p in params}


def _prefit_q_on_the_bounds_pairs(trainer, steps=100):
    """A fresh Q often gives a negative CLUB bound (clamped to 0: no gradient at all); fitted
    on the bound's own pairs, the bound is positive and its gradient reaches Q."""
    with torch.no_grad():
        views = trainer.model.auxiliary_views(trainer.source.features)
    opt = torch.optim.Adam(trainer.club.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = sum(_nll(trainer.club.net_for(m), views.club_generic[m], views.club_unique[m]) for m in MODALITIES)
        opt.zero_grad()
        loss.backward()
        opt.step()
    trainer.club.zero_grad(set_to_none=True)


def _check_q_stays_out_of_the_main_step(trainer, epoch):
    """Static: Q's parameters are in Q's optimizer only. Behaviour: with no inner fitting
    steps, training steps leave Q exactly as it was although the main loss's gradient
    reaches Q (Q's gradients are not cleared by the main step, so they add up here)."""
    club_ids = _ids(trainer.club.parameters())
    main_ids = _ids(p for group in trainer.optimizer.param_groups for p in group["params"])
    if trainer.source.table_optimizer is not None:
        main_ids |= _ids(p for group in trainer.source.table_optimizer.param_groups for p in group["params"])
    assert club_ids and not club_ids & main_ids
    assert _ids(p for g in trainer.club_optimizer.param_groups for p in g["params"]) == club_ids
    assert _ids(trainer.model.parameters()) <= main_ids

    trainer.cfg.model.club_inner_steps = 0
    _prefit_q_on_the_bounds_pairs(trainer)
    q_before = copy.deepcopy(trainer.club.state_dict())
    model_before = copy.deepcopy(trainer.model.state_dict())
    losses, _ = trainer.train_epoch(epoch)
    grad = sum(float(p.grad.abs().sum()) for p in trainer.club.parameters() if p.grad is not None)
    print(f"Q gradient from the main loss {grad:.3g} (club term {losses['club']:.3g})")
    assert grad > 0, "the CLUB term sent no gradient to Q: the check below would be vacuous"
    assert all(torch.equal(q_before[k], v) for k, v in trainer.club.state_dict().items())
    assert any(not torch.equal(model_before[k], v) for k, v in trainer.model.state_dict().items())


@pytest.mark.parametrize("mode", ["as_published", "within_modality"])
def test_sampled_mode_keeps_q_out_of_the_main_optimizers(tiny_root, tmp_path, mode):
    trainer = _trainer(tiny_root, tmp_path, mode, full_graph=False, inner_steps=0, steps_per_epoch=3)
    assert trainer.source.table_optimizer is not None  # SparseAdam over the user tables
    _check_q_stays_out_of_the_main_step(trainer, epoch=0)


@pytest.mark.parametrize("mode", ["as_published", "within_modality"])
def test_full_graph_step_fits_q_on_the_modes_pairs_and_only_there(tiny_root, tmp_path, mode):
    """A real full-graph step: Q after it equals an independent Adam fit on the mode's pairs
    (spelled out by modality name) of the step's own all-item views, and differs from every
    wrong pairing's fit; then the main step never moves Q."""
    inner = 4
    trainer = _trainer(tiny_root, tmp_path, mode, full_graph=True, inner_steps=inner, steps_per_epoch=1)
    with torch.no_grad():  # the step's views: computed before its main optimizer step
        views = trainer.model.auxiliary_views(trainer.source.features)
    right, wrong = _right_and_wrong_pairs(mode, views.club_generic, views.club_unique)
    lr = trainer.cfg.train.lr
    expected = _independent_fit(trainer.club, right, inner, lr)
    wrong_fits = {k: _independent_fit(trainer.club, pairs, inner, lr) for k, pairs in wrong.items()}
    trainer.train_epoch(0)
    worst, gaps = _gaps({n: p.detach() for n, p in trainer.club.named_parameters()}, expected, wrong_fits)
    print(f"{mode}: Q vs the expected fit {worst:.1e}; vs wrong pairings {gaps}")
    assert worst < 1e-6 and min(gaps.values()) > 1e-5, (worst, gaps)

    trainer.cfg.train.max_steps_per_epoch = 3
    _check_q_stays_out_of_the_main_step(trainer, epoch=1)
