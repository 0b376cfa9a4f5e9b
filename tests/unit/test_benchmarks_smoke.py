"""Benchmark helpers whose numbers end up in docs: checked here without running a benchmark.

``benchmarks/lr_recipe.py`` derives each run's warm-up from the steps of its first epoch; if its
step count drifted from the trainer's, the warm-up recorded next to a Recall@20 would not be
the one the run used.
"""
from __future__ import annotations

import importlib.util
import json
import pathlib

import numpy as np
import pytest

from sea_dist.train.epoch_data import EpochPlan, NegativeSampler

BENCH = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "lr_recipe.py"


@pytest.fixture(scope="module")
def lr_recipe():
    spec = importlib.util.spec_from_file_location("lr_recipe_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("n_train,batch,world", [(103, 10, 2), (101, 10, 2), (100, 10, 2), (5, 16, 2), (37, 8, 1)])
def test_steps_per_epoch_is_the_trainers(lr_recipe, n_train, batch, world):
    users = np.arange(n_train, dtype=np.int64) % 7
    items = np.arange(n_train, dtype=np.int64)
    plan = EpochPlan(users, items, NegativeSampler(users, items, n_train + 10, rule="all_items"), batch, 0, 0)
    assert lr_recipe.steps_per_epoch(n_train, batch, world) == plan.num_steps(world)


def test_steps_per_epoch_of_the_measured_tier(lr_recipe):
    # 316,990 train edges: 19 full batches of 16,384 + 5,694; 1 of 262,144 + 54,846
    assert lr_recipe.steps_per_epoch(316_990, 16_384, 2) == 20
    assert lr_recipe.steps_per_epoch(316_990, 262_144, 2) == 2


def test_warmup_is_a_share_of_epoch_one_and_at_least_two_steps(lr_recipe):
    assert lr_recipe.warmup_steps(0.0, 20) == 0
    assert lr_recipe.warmup_steps(0.05, 20) == 2  # ceil(1.0) = 1 step would be no warm-up
    assert lr_recipe.warmup_steps(0.05, 2) == 2
    assert lr_recipe.warmup_steps(0.05, 305) == 16  # ceil(15.25)


def test_variants_parse(lr_recipe):
    assert lr_recipe.parse_variants("reference:none:0,sqrt:sqrt:0.05") == [
        ("reference", "none", 0.0), ("sqrt", "sqrt", 0.05)
    ]


def test_appended_summary_keeps_only_the_same_tier(lr_recipe, tmp_path):
    base = {"users": 10, "items": 5, "interactions": 50, "epochs": 4, "seed": 1, "mode": "sampled",
            "workers": 2, "lr": 1e-4}
    rows = [
        {**base, "stage": "run", "variant": "a"},
        {**base, "stage": "start"},
        {**base, "users": 11, "stage": "run", "variant": "other tier"},
        {**base, "epochs": 2, "stage": "run", "variant": "other budget"},
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [r["variant"] for r in lr_recipe.previous_rows(str(path), base)] == ["a"]
    assert lr_recipe.previous_rows(str(tmp_path / "missing.jsonl"), base) == []
