"""``benchmarks/vs_reference.py`` without running a benchmark: what it reports and what it
does to the user's checkout of the authors' code (nothing: it works on a copy)."""
from __future__ import annotations

import importlib.util
import os
import pathlib

import numpy as np
import pytest

BENCH = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "vs_reference.py"


@pytest.fixture(scope="module")
def vs():
    spec = importlib.util.spec_from_file_location("vs_reference_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_wall_to_reach_sums_train_and_eval_until_the_target(vs):
    epochs = [
        {"train_s": 10.0, "eval_s": 1.0, "valid": 0.05},
        {"train_s": 12.0, "eval_s": 1.0, "valid": 0.06004},  # 0.0600 at 4 decimals
        {"train_s": 11.0, "eval_s": 2.0, "valid": 0.07},
    ]
    assert vs.wall_to_reach(epochs, 0.06) == 24.0
    assert vs.wall_to_reach(epochs, 0.05) == 11.0
    assert vs.wall_to_reach(epochs, 0.08) is None
    assert vs.wall_to_reach(epochs, None) is None


def test_subsample_keeps_popular_items_and_renumbers(vs):
    users = np.array([0, 0, 0, 1, 1, 1, 2, 2, 3], dtype=np.int64)
    items = np.array([5, 6, 7, 5, 6, 9, 5, 9, 7], dtype=np.int64)
    splits = np.array([0, 1, 2, 0, 0, 2, 0, 1, 0], dtype=np.int8)
    u, i, s = vs.subsample_graph(users, items, splits, n_users=0, n_items=2, seed=0)
    # item degrees: 5 -> 3, 6 -> 2, 7 -> 2, 9 -> 2; the two most interacted: 5, then 6 (stable)
    assert i.tolist() == [0, 1, 0, 1, 0]  # 5 -> 0, 6 -> 1
    assert u.tolist() == [0, 0, 1, 1, 2]  # users 0, 1, 2 (user 3 had only item 7)
    assert s.tolist() == [0, 1, 0, 0, 0]


def test_prepared_copy_leaves_the_checkout_untouched(vs, tmp_path):
    checkout = tmp_path / "SEA"
    (checkout / "src" / "models").mkdir(parents=True)
    (checkout / "src" / "configs" / "dataset").mkdir(parents=True)
    (checkout / "src" / "models" / "SEA.py").write_text("# model\n")
    (checkout / "src" / "configs" / "dataset" / "baby.yaml").write_text("inter_file_name: 'baby.inter'\n")
    before = {p: p.read_bytes() for p in checkout.rglob("*") if p.is_file()}

    copy = vs.prepare_reference_copy(str(checkout), str(tmp_path / "work"), "babygen")

    assert {p: p.read_bytes() for p in checkout.rglob("*") if p.is_file()} == before
    assert os.path.realpath(os.path.join(copy, "models", "sea.py")) == os.path.realpath(
        os.path.join(copy, "models", "SEA.py")
    )
    assert open(os.path.join(copy, "configs", "dataset", "babygen.yaml")).read() == "inter_file_name: 'babygen.inter'\n"
    assert os.path.isfile(os.path.join(copy, "_vs_reference_runner.py"))
    stubs = tmp_path / "work" / "reference" / "stubs"
    assert (stubs / "wandb.py").is_file() and (stubs / "torchvision" / "transforms" / "functional.py").is_file()


def test_table_shows_every_run_newest_first(vs):
    def run_rows(date, threads, authors_s, ours_s):
        common = {"benchmark": "vs_reference", "date": date, "epochs": 1, "seed": 999, "cpus": 2,
                  "dataset": {"n_users": 10, "n_items": 5, "n_interactions": 40, "splits": [30, 5, 5],
                              "subsample": {"users": 10, "items": 5}}}
        return [
            {**common, "impl": "authors", "mode": "full_graph", "train_s_per_epoch": authors_s, "eval_s_per_epoch": 1.0,
             "valid_recall@20_by_epoch": [0.1], "torch_threads": threads, "load_avg_mean": 2.0},
            {**common, "impl": "sea_dist", "mode": "full_graph", "train_s_per_epoch": ours_s, "eval_s_per_epoch": 1.0,
             "valid_recall@20_by_epoch": [0.1], "torch_threads": threads, "load_avg_mean": 2.0},
            {**common, "comparison": True, "authors_wall_to_best_s": authors_s + 1,
             "full_graph": {"train_s_per_epoch_over_authors": ours_s / authors_s, "recall_over_authors_by_epoch": [1.0],
                            "wall_to_authors_best_s": ours_s + 1, "goal_met": ours_s / authors_s <= 0.5}},
        ]

    text = vs.render_table(run_rows("2026-01-01", 2, 100.0, 80.0) + run_rows("2026-02-01", 1, 100.0, 40.0))
    assert text.startswith(vs.TABLE_START) and text.rstrip().endswith(vs.TABLE_END)
    assert text.index("2026-02-01") < text.index("2026-01-01")
    assert "| sea_dist full-graph | 40.0 | 0.4 |" in text and "sea_dist full-graph met" in text
    assert "| sea_dist full-graph | 80.0 | 0.8 |" in text and "sea_dist full-graph not met" in text
