"""Every triple weighs the same whichever worker's (unequal) slice of the batch it is in.

DDP averages gradients with equal weight per worker; partitioned workers take batches
proportional to their partitions' edge counts. The plans' ``loss_weight`` corrects for that.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sea_dist.config import Config
from sea_dist.config import apply_overrides
from sea_dist.sources.synthetic import SyntheticSpec, write_synthetic
from sea_dist.train.epoch_data import EpochPlan, NegativeSampler, PartitionEpochPlan
from tests.dist_utils import run_distributed


def test_replicated_plan_weights_by_slice_size():
    users = np.arange(10, dtype=np.int64)
    plan = EpochPlan(users, users % 4, NegativeSampler(users, users % 4, 6), batch_size=7, seed=0, epoch=0)
    # step 0: 7 triples cut 3 + 4 over 2 workers; step 1: the last 3 cut 1 + 2
    assert [plan.loss_weight(0, r, 2) for r in (0, 1)] == pytest.approx([6 / 7, 8 / 7])
    assert [plan.loss_weight(1, r, 2) for r in (0, 1)] == pytest.approx([2 / 3, 4 / 3])


def test_partition_plan_weights_by_every_ranks_batch():
    users = np.arange(9, dtype=np.int64)
    negatives = NegativeSampler(users, users % 3, 5)
    # rank 0 holds 9 edges, rank 1 holds 3: 2 steps of 4-5 and 1-2 triples
    plan = PartitionEpochPlan(users, users % 3, negatives, steps=2, seed=0, epoch=0, rank=0, edges_per_rank=[9, 3])
    assert [len(plan.local_batch(s, 0, 2)[0]) for s in (0, 1)] == [4, 5]
    assert plan.loss_weight(0, 0, 2) == pytest.approx(4 * 2 / (4 + 1))
    assert plan.loss_weight(1, 0, 2) == pytest.approx(5 * 2 / (5 + 2))


def _overrides(root: str) -> dict:
    return {
        "data.root": root,
        "graph.fanouts": [-1, -1],  # all neighbours: the sampled step is deterministic
        "graph.knn_fanout": -1,
        "model.embedding_dim": 8,
        "model.ureg": 0.0,  # BPR only: its mean over triples is what the weighting makes exact
        "model.alpha_contrast": 0.0,
        "model.club_inner_steps": 1,
        "output.output_dir": "",
    }


UNION = 16
CUT = 3  # rank 0 takes 3 triples, rank 1 the other 13


def _batch(trainer) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(5)
    pick = rng.choice(len(trainer.source.train_users), UNION, replace=False)
    users = trainer.source.train_users[pick]
    return users, trainer.source.train_items[pick], trainer.source.negatives.sample(users, rng)


def _step(rank: int, world: int, overrides: dict, weighted: bool) -> dict:
    import torch

    from sea_dist.runtime.distributed import WorkerContext
    from sea_dist.train.loop import EpochTimes, StepInputs, Trainer

    torch.set_num_threads(1)
    trainer = Trainer(apply_overrides(Config(), overrides), WorkerContext.from_process_group())
    users, pos, neg = _batch(trainer)
    if world > 1:
        lo, hi = ((0, CUT), (CUT, UNION))[rank]
        users, pos, neg = users[lo:hi], pos[lo:hi], neg[lo:hi]
    weight = len(users) * world / UNION if weighted else 1.0
    inputs = StepInputs(users, pos, neg, weight, torch.Generator().manual_seed(0))
    inputs.batch = trainer.source.sampler.sample(*(torch.from_numpy(a) for a in (users, pos, neg)))
    inputs.features, _ = trainer.source.fetch_features(inputs.batch.input_items)
    trainer.train_step(inputs, EpochTimes())
    grads = {f"model.{n}": p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    for n, p in trainer.tables.named_parameters():
        grads[f"tables.{n}"] = p.grad.to_dense().clone()
    return grads


@pytest.mark.slow
def test_two_worker_step_with_unequal_batches_equals_one_process_union(tmp_path):
    root = str(tmp_path / "data")
    write_synthetic(SyntheticSpec(n_users=60, n_items=30, n_interactions=600, modalities={"image": 6, "text": 4}), root)
    overrides = _overrides(root)
    (single,) = run_distributed(_step, 1, overrides, True)
    weighted = run_distributed(_step, 2, overrides, True)
    unweighted = run_distributed(_step, 2, overrides, False)
    assert set(weighted[0]) == set(single)
    for rank in range(2):
        for name, grad in single.items():
            torch.testing.assert_close(weighted[rank][name], grad, atol=1e-7, rtol=1e-5, msg=name)
    # without the weights DDP's equal average is a different gradient (the test can fail)
    differs = [name for name, g in single.items() if not torch.allclose(unweighted[0][name], g, atol=1e-7, rtol=1e-3)]
    assert differs
