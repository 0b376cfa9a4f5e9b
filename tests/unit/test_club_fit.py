"""Q's fit (issue 13): the fast, gathered fit equals the plain autograd fit, per-inner-step
gradient averaging across workers, and a one-process fit over the whole batch."""

import pytest
import torch

from sea_dist.config import ModelConfig
from sea_dist.model.club_fit import fit_club, fit_club_reference, intra_op_threads
from sea_dist.model.objective import (
    ClubEstimators,
    fit_club_step,
    gather_fitting_pairs,
    merge_identical_rows,
)
from sea_dist.runtime.distributed import WorkerContext
from tests.dist_utils import run_distributed

TOL = 1e-6
KERNELS = ["native", "torch"]  # the compiled CPU kernel (club_native) and torch ops: both must match
MODES = {"as_published": ["image", "text"], "within_modality": ["image", "text", "audio"]}


@pytest.fixture(autouse=True)
def one_thread():
    """The autograd reference on tiny tensors crawls with 2 threads on a loaded machine
    (the very thread sync :func:`fit_club` avoids); the fast fit picks 1 thread itself."""
    with intra_op_threads(1):
        yield


def _club(mode: str, seed: int = 0):
    torch.manual_seed(seed)
    club = ClubEstimators(MODES[mode], ModelConfig(club_fit=mode))
    return club, torch.optim.Adam(club.parameters(), lr=1e-4)


def _views(modalities, rows: int, seed: int):
    """(generic, unique) rows with some dependence of y on x, so the fit has a signal."""
    g = torch.Generator().manual_seed(seed)
    generic = {m: torch.randn(rows, 32, generator=g) for m in modalities}
    unique = {m: 0.5 * generic[m].roll(1, dims=1) + torch.randn(rows, 32, generator=g) for m in modalities}
    return generic, unique


def _max_diff(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _params(club) -> dict:
    return {n: p.detach().clone() for n, p in club.named_parameters()}


def _state(club, optimizer) -> dict:
    out = {f"param.{n}": p.detach().clone() for n, p in club.named_parameters()}
    for n, p in club.named_parameters():
        for key in ("exp_avg", "exp_avg_sq"):
            out[f"{key}.{n}"] = optimizer.state[p][key].clone()
    return out


@pytest.mark.parametrize("kernel", KERNELS)
def test_first_step_by_hand(kernel):
    """Zero Q, y = +-1: mu = logvar = 0, so the loss is sum(y^2)/2 per row (16 for 32 dims)
    per pair; only mu's output bias has a gradient (-mean y per dim; logvar's is
    (1 - y^2)/2 = 0; hidden activations are 0) and Adam's first step moves it by lr * sign."""
    club, opt = _club("as_published")
    with torch.no_grad():
        for p in club.parameters():
            p.zero_()
    rows = 6
    sign = torch.where(torch.arange(32) % 3 == 0, -1.0, 1.0)
    generic = {"image": sign.repeat(rows, 1), "text": torch.randn(rows, 32)}
    unique = {"image": sign.repeat(rows, 1), "text": torch.randn(rows, 32)}
    loss = fit_club(club.fitting_pairs(generic, unique), opt, 1, kernel=kernel)
    assert loss == pytest.approx(2 * 16.0, rel=1e-6)  # two pairs, each a mean of 16
    net = club.net_for("image")
    lr_step = 1e-4 * 2.0 / (2.0 + 1e-8)  # lr * |g| / (|g| + eps), |g| = 2 (two pairs' means)
    assert torch.allclose(net.mu[2].bias, lr_step * sign, rtol=0, atol=1e-10)  # float32 ulp ~7e-12
    others = [p for n, p in net.named_parameters() if n != "mu.2.bias"]
    assert all(torch.count_nonzero(p) == 0 for p in others)
    assert float(opt.state[net.mu[2].bias]["step"]) == 1.0


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("mode", list(MODES))
def test_fast_fit_equals_autograd_fit_and_continues_its_adam_state(mode, kernel):
    fast, fast_opt = _club(mode)
    ref, ref_opt = _club(mode)
    for step, rows in enumerate((57, 3)):  # the second fit starts from the first one's Adam state
        generic, unique = _views(MODES[mode], rows, seed=step)  # 3 rows: less than one vector
        fast_loss = fit_club(fast.fitting_pairs(generic, unique), fast_opt, 50, kernel=kernel)
        ref_loss = fit_club_reference(ref.fitting_pairs(generic, unique), ref_opt, 50)
        assert fast_loss == pytest.approx(ref_loss, rel=1e-6)
        assert _max_diff(_state(fast, fast_opt), _state(ref, ref_opt)) < TOL
    assert _max_diff(_params(fast), _params(_club(mode)[0])) > 1e-3  # the fits moved Q
    for p in fast.parameters():
        assert p.grad is None
        assert fast_opt.state[p]["step"].dtype == torch.float32 and float(fast_opt.state[p]["step"]) == 100
    # the state is the optimizer's own: it checkpoints and reloads into a plain Adam
    reloaded = torch.optim.Adam(fast.parameters(), lr=1e-4)
    reloaded.load_state_dict(fast_opt.state_dict())
    assert float(reloaded.state[next(fast.parameters())]["step"]) == 100


def test_low_precision_views_are_fitted_in_q_precision():
    """Views from a bf16 forward: Q (fp32) fits on them cast to fp32, as autograd would."""
    generic, unique = _views(MODES["as_published"], 20, seed=4)
    low = ({m: t.bfloat16() for m, t in generic.items()}, {m: t.bfloat16() for m, t in unique.items()})
    fast, fast_opt = _club("as_published")
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as if called inside the bf16 forward
        fit_club(fast.fitting_pairs(*low), fast_opt, 5)
    ref, ref_opt = _club("as_published")
    cast = tuple({m: t.float() for m, t in d.items()} for d in low)
    fit_club_reference(ref.fitting_pairs(*cast), ref_opt, 5)
    assert all(p.dtype == torch.float32 for p in fast.parameters())
    assert _max_diff(_state(fast, fast_opt), _state(ref, ref_opt)) < TOL


@pytest.mark.parametrize("kernel", KERNELS)
def test_hook_sees_each_steps_gradients(kernel):
    """``after_backward`` sees autograd's gradients in ``.grad`` and may rewrite them in
    place (how per-inner-step averaging plugs in); here it doubles them."""
    fast, fast_opt = _club("as_published")
    ref, ref_opt = _club("as_published")
    generic, unique = _views(MODES["as_published"], 40, seed=3)
    seen = []

    def double(module):
        seen.append({n: p.grad.clone() for n, p in module.named_parameters()})
        for p in module.parameters():
            p.grad.mul_(2.0)

    fit_club(fast.fitting_pairs(generic, unique), fast_opt, 3, lambda: double(fast), kernel=kernel)
    fit_club_reference(ref.fitting_pairs(generic, unique), ref_opt, 3, lambda: double(ref))
    assert len(seen) == 6
    for got, want in zip(seen[:3], seen[3:]):
        assert max((got[n] - want[n]).abs().max().item() / want[n].abs().max().item() for n in got) < 1e-5
    assert _max_diff(_state(fast, fast_opt), _state(ref, ref_opt)) < TOL


def test_fit_runs_on_one_thread_and_restores_the_count():
    club, opt = _club("as_published")
    generic, unique = _views(MODES["as_published"], 10, seed=0)
    inside = []
    with intra_op_threads(2):
        fit_club(club.fitting_pairs(generic, unique), opt, 2, lambda: inside.append(torch.get_num_threads()))
        assert torch.get_num_threads() == 2
    assert inside == [1, 1]


class _TwoFakeRanks:
    """all_gather_rows as two ranks would answer it: the second rank's rows are ours plus
    ``shift`` (0: the same items on both ranks)."""

    def __init__(self, shift: float):
        self.calls, self.shift = 0, shift

    def all_gather_rows(self, tensor):
        self.calls += 1
        return torch.cat([tensor, tensor + self.shift])


def test_gather_packs_every_pair_into_one_collective():
    club, _ = _club("within_modality")
    generic, unique = _views(MODES["within_modality"], 5, seed=1)
    pairs = club.fitting_pairs(generic, unique)
    workers = _TwoFakeRanks(100.0)
    gathered, weights = gather_fitting_pairs(pairs, workers)
    assert workers.calls == 1 and weights is None  # no row repeats
    for (net, x, y), (gnet, gx, gy) in zip(pairs, gathered):
        assert gnet is net
        assert torch.equal(gx, torch.cat([x, x + 100.0])) and torch.equal(gy, torch.cat([y, y + 100.0]))


def test_identical_rows_are_merged_with_their_counts():
    rows = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [1.0, 2.0, 3.0], [1.0, 2.0, 7.0], [1.0, 2.0, 3.0]])
    distinct, counts = merge_identical_rows(rows)  # rows 0, 2, 3, 4 share a key: the exact path
    as_dict = {tuple(r.tolist()): int(c) for r, c in zip(distinct, counts)}
    assert as_dict == {(1.0, 2.0, 3.0): 3, (4.0, 5.0, 6.0): 1, (1.0, 2.0, 7.0): 1}
    distinct, counts = merge_identical_rows(rows[[0, 1, 2]])  # keys tell them apart
    assert distinct.tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]] and counts.tolist() == [2.0, 1.0]
    assert merge_identical_rows(rows[[0, 1, 3]])[1] is None


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("mode", list(MODES))
def test_merged_rows_fit_as_the_rows_they_stand_for(mode, kernel):
    """Two fake ranks holding the same items: the fit on merged rows (weight 2) equals the
    plain fit on both copies."""
    generic, unique = _views(MODES[mode], 31, seed=5)
    fast, fast_opt = _club(mode)
    gathered, weights = gather_fitting_pairs(fast.fitting_pairs(generic, unique), _TwoFakeRanks(0.0))
    assert weights is not None and weights.tolist() == [2.0] * 31
    fit_club(gathered, fast_opt, 50, row_weights=weights, kernel=kernel)
    ref, ref_opt = _club(mode)
    both = ({m: torch.cat([t, t]) for m, t in generic.items()}, {m: torch.cat([t, t]) for m, t in unique.items()})
    fit_club_reference(ref.fitting_pairs(*both), ref_opt, 50)
    assert _max_diff(_state(fast, fast_opt), _state(ref, ref_opt)) < TOL


def test_unsupported_optimizers_are_refused():
    club, _ = _club("as_published")
    pairs = club.fitting_pairs(*_views(MODES["as_published"], 4, seed=0))
    with pytest.raises(TypeError):
        fit_club(pairs, torch.optim.SGD(club.parameters(), lr=0.1), 1)
    with pytest.raises(ValueError):
        fit_club(pairs, torch.optim.Adam(club.parameters(), lr=0.1, weight_decay=0.1), 1)


# ---- across workers ---------------------------------------------------------------------
def _rank_views(mode: str, rank: int):
    """Unequal rows per rank; the first 11 (items every rank's batch holds) equal on all."""
    shared = _views(MODES[mode], 11, seed=99)
    own = _views(MODES[mode], 23 + 9 * rank, seed=100 + rank)
    return tuple({m: torch.cat([a[m], b[m]]) for m in a} for a, b in zip(shared, own))


def _fit_on_workers(rank, world):
    """Each rank fits on its own rows, (a) as before issue 13: autograd, gradients averaged
    over workers by row count at every inner step; (b) gathered once, then the fast fit on
    all rows; (c) gathered once, each rank fitting a share, gradients summed per step."""
    ctx = WorkerContext.from_process_group() if world > 1 else WorkerContext()
    with intra_op_threads(1):
        return _fit_both_ways(rank, ctx)


def _fit_both_ways(rank, ctx):
    out = {}
    for mode in MODES:
        generic, unique = _rank_views(mode, rank)
        ref, ref_opt = _club(mode)
        pairs = ref.fitting_pairs(generic, unique)
        local = float(pairs[0][1].shape[0])
        total = float(ctx.all_reduce_sum(torch.tensor([local], dtype=torch.float64)))
        fit_club_reference(pairs, ref_opt, 50, lambda: ctx.average_gradients(ref, local, total))
        fast, fast_opt = _club(mode)
        fit_club_step(fast, generic, unique, fast_opt, 50, ctx, kernel="native")
        shared, shared_opt = _club(mode)
        fit_club_step(shared, generic, unique, shared_opt, 50, ctx, share_rows=True, kernel="native")
        out[mode] = (_state(ref, ref_opt), _state(fast, fast_opt), _state(shared, shared_opt))
    _, weights = gather_fitting_pairs(pairs, ctx)
    out["merged_rows"] = None if weights is None else (weights.shape[0], float(weights.sum()))
    return out


def _one_process(mode: str, world: int):
    """A plain one-process fit over the whole batch: every rank's rows, in rank order."""
    views = [_rank_views(mode, r) for r in range(world)]
    generic = {m: torch.cat([v[0][m] for v in views]) for m in MODES[mode]}
    unique = {m: torch.cat([v[1][m] for v in views]) for m in MODES[mode]}
    club, opt = _club(mode)
    fit_club_reference(club.fitting_pairs(generic, unique), opt, 50)
    return _state(club, opt)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_gathered_fit_equals_per_step_averaging_and_one_process_fit(world):
    results = [_fit_on_workers(0, 1)] if world == 1 else run_distributed(_fit_on_workers, world)
    own = sum(23 + 9 * r for r in range(world))
    assert results[0]["merged_rows"] == (None if world == 1 else (11 + own, 11.0 * world + own))
    for mode in MODES:
        whole = _one_process(mode, world)
        fast0, shared0 = results[0][mode][1], results[0][mode][2]
        for per_step_avg, fast, shared in (r[mode] for r in results):
            assert all(torch.equal(fast[k], fast0[k]) for k in fast)  # replicas stay identical
            assert all(torch.equal(shared[k], shared0[k]) for k in shared)
            assert _max_diff(fast, per_step_avg) < TOL
            assert _max_diff(fast, whole) < TOL
            assert _max_diff(shared, whole) < TOL
            assert _max_diff(per_step_avg, whole) < TOL
        moved = {k[len("param."):]: v for k, v in fast0.items() if k.startswith("param.")}
        assert _max_diff(moved, _params(_club(mode)[0])) > 1e-3  # the fits moved Q
