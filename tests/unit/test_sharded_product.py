"""The folded weight product shared out over ranks gives what every rank computing it whole
gives: the product itself, and the gradients DDP averages (gloo ranks, 1-3 of them)."""
from __future__ import annotations

import pytest
import torch

from sea_dist.config import Config, apply_overrides
from sea_dist.runtime.sharded_product import _row_blocks
from sea_dist.sources.synthetic import SyntheticSpec, write_synthetic
from tests.dist_utils import run_distributed
from tests.unit.test_loss_weighting import CUT, UNION, _batch, _overrides


def test_row_blocks_cover_every_row_once():
    assert _row_blocks(7, 3) == [(0, 2), (2, 4), (4, 7)]
    assert _row_blocks(2, 3) == [(0, 0), (0, 1), (1, 2)]  # a rank may own no row
    assert _row_blocks(5, 1) == [(0, 5)]


def _product_grads(rank: int, world: int, shared: bool) -> dict:
    import torch.distributed as dist

    from sea_dist.runtime.sharded_product import ShardedProduct

    torch.manual_seed(0)
    a = torch.randn(7, 5, requires_grad=True)
    w_full = torch.randn(6, 5, requires_grad=True)
    w = w_full[1:].t()  # a view, as the branches pass slices of the transform's weight
    scale = torch.randn(7, 5, generator=torch.Generator().manual_seed(100 + rank))  # this rank's loss
    product = ShardedProduct(dist.new_group(), min_macs=0) if shared else (lambda x, y: x @ y)
    out = product(a, w)
    (out * scale).sum().backward()
    for p in (a, w_full):  # DDP: the mean over ranks
        dist.all_reduce(p.grad)
        p.grad /= world
    calls = product.shared_calls if shared else 0
    return {"out": out.detach(), "a": a.grad, "w": w_full.grad, "calls": calls}


@pytest.mark.parametrize("world", [1, 2, 3])
def test_shared_product_and_gradients_equal_the_whole_product_on_every_rank(world):
    shared = run_distributed(_product_grads, world, True)
    whole = run_distributed(_product_grads, world, False)
    for rank in range(world):
        assert shared[rank]["calls"] == (1 if world > 1 else 0)
        for key in ("out", "a", "w"):
            torch.testing.assert_close(shared[rank][key], whole[rank][key], atol=1e-6, rtol=1e-6, msg=key)


def _trainer_step(rank: int, world: int, overrides: dict, shared: bool) -> dict:
    import torch.distributed as dist

    from sea_dist.runtime.distributed import WorkerContext
    from sea_dist.runtime.sharded_product import ShardedProduct
    from sea_dist.train.loop import EpochTimes, StepInputs, Trainer

    torch.set_num_threads(1)
    overrides = {**overrides, "train.share_weight_products": shared, "train.share_club_fit": shared,
                 "model.club_inner_steps": 5}
    trainer = Trainer(apply_overrides(Config(), overrides), WorkerContext.from_process_group())
    product = None
    if shared:  # share every product, however small (the test's widths are tiny)
        product = ShardedProduct(dist.new_group(), min_macs=0)
        trainer.model.share_weight_products(product)
    users, pos, neg = _batch(trainer)
    lo, hi = ((0, CUT), (CUT, UNION))[rank]
    users, pos, neg = users[lo:hi], pos[lo:hi], neg[lo:hi]
    inputs = StepInputs(users, pos, neg, len(users) * world / UNION, torch.Generator().manual_seed(0))
    inputs.batch = trainer.source.sampler.sample(*(torch.from_numpy(a) for a in (users, pos, neg)))
    inputs.features, _ = trainer.source.fetch_features(inputs.batch.input_items)
    trainer.train_step(inputs, EpochTimes())
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    club = {n: p.detach().clone() for n, p in trainer.club.named_parameters()}
    return {"grads": grads, "club": club, "calls": 0 if product is None else product.shared_calls}


@pytest.mark.slow
def test_a_training_step_with_shared_products_equals_the_replicated_one(tmp_path):
    """Two workers with unequal batches: the dense gradients after DDP are the same whether
    each worker forms every folded weight or only its share of each (8 shared products per step:
    2 modalities x the GCN input, two CLUB views and the projection), and Q after its 5-step fit
    is the same whether each worker fits all rows or its share (train.share_club_fit)."""
    root = str(tmp_path / "data")
    write_synthetic(SyntheticSpec(n_users=60, n_items=30, n_interactions=600, modalities={"image": 6, "text": 4}), root)
    overrides = _overrides(root)
    shared = run_distributed(_trainer_step, 2, overrides, True)
    replicated = run_distributed(_trainer_step, 2, overrides, False)
    assert shared[0]["calls"] == shared[1]["calls"] == 8
    assert set(shared[0]["grads"]) == set(replicated[0]["grads"])
    for rank in range(2):
        for name, grad in replicated[rank]["grads"].items():
            torch.testing.assert_close(shared[rank]["grads"][name], grad, atol=1e-7, rtol=1e-5, msg=name)
        for name, value in replicated[rank]["club"].items():
            torch.testing.assert_close(shared[rank]["club"][name], value, atol=1e-6, rtol=1e-5, msg=name)
