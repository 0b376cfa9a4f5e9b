"""The large-batch recipe (lr scaling, warm-up) and bf16 autocast, with hand-checkable numbers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sea_dist.config import Config
from sea_dist.config import apply_overrides
from sea_dist.sources.synthetic import SyntheticSpec, write_synthetic
from sea_dist.runtime.distributed import WorkerContext
from sea_dist.train.lr_schedule import lr_at, scaled_lr


def test_lr_scales_with_the_global_batch_and_never_down():
    assert scaled_lr(1e-4, 8192, 2048, "none") == pytest.approx(1e-4)
    assert scaled_lr(1e-4, 8192, 2048, "sqrt") == pytest.approx(2e-4)
    assert scaled_lr(1e-4, 8192, 2048, "linear") == pytest.approx(4e-4)
    assert scaled_lr(1e-4, 262_144, 2048, "sqrt") == pytest.approx(1e-4 * math.sqrt(128))
    assert scaled_lr(1e-4, 512, 2048, "linear") == pytest.approx(1e-4)  # small batches keep lr
    with pytest.raises(ValueError, match="lr_scaling"):
        scaled_lr(1e-4, 8192, 2048, "cubic")


def test_warmup_is_linear_then_constant():
    assert [lr_at(s, 1.0, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_at(0, 3.0, 0) == 3.0


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("lr") / "data")
    write_synthetic(SyntheticSpec(n_users=80, n_items=40, n_interactions=1200, modalities={"image": 6, "text": 4}), root)
    return root


def _trainer(root: str, **overrides):
    from sea_dist.train.loop import Trainer

    base = {"data.root": root, "model.embedding_dim": 8, "model.club_inner_steps": 1, "output.output_dir": ""}
    return Trainer(apply_overrides(Config(), {**base, **overrides}), WorkerContext())


def test_trainer_sets_the_scheduled_lr_from_the_run_step(small_root):
    trainer = _trainer(
        small_root, **{"train.batch_size": 256, "train.max_steps_per_epoch": 2, "train.warmup_steps": 4,
                       "train.lr_scaling": "sqrt", "train.lr_reference_batch": 64}
    )
    peak = 1e-4 * 2.0  # sqrt(256 / 64)
    trainer.train_epoch(0)  # steps 0, 1 of the run: last lr = peak * 2/4
    lrs = [g["lr"] for o in (trainer.optimizer, trainer.source.table_optimizer) for g in o.param_groups]
    assert lrs == pytest.approx([peak * 0.5] * len(lrs))
    trainer.train_epoch(1)  # run steps 2, 3: warm-up done
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(peak)
    assert trainer.club_optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)  # Q's fit keeps lr


def test_bf16_autocast_step_is_close_to_fp32_and_losses_stay_fp32(small_root):
    results = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        trainer = _trainer(small_root, **{"train.precision": precision, "train.batch_size": 128})
        plan = trainer.source.plan_epoch(0)
        inputs = trainer.prepare_step(plan, 0, 0)
        pos, neg, views, _ = trainer._forward(inputs)
        results[precision] = (pos, neg)
        assert pos.dtype == neg.dtype == torch.float32
        assert all(t.dtype == torch.float32 for t in views.club_generic.values())
    torch.testing.assert_close(results["bf16"][0], results["fp32"][0], atol=0.05, rtol=0.05)
    assert not torch.equal(results["bf16"][0], results["fp32"][0])  # bf16 really ran
