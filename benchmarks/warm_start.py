#!/usr/bin/env python
"""Warm start vs cold training on tonight's data, JSON lines on stdout.

The default dataset is split into "yesterday" (the first 90% of its interactions in a seeded
arrival order: the synthetic data has no timestamps) and "today" (all of them); every
interaction keeps its train/valid/test label. Yesterday's model is trained and published;
then today's data is trained (a) cold and (b) warm-started from yesterday's published model.
Reported: the cold run's best validation Recall@20 and the epochs and wall seconds it took,
and the epochs and wall seconds the warm run needs to reach that value (goal: at most half).

    python benchmarks/warm_start.py [--epochs 20] [--mode full_graph|sampled]
"""
from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
from _common import emit, train

from sea_dist.data.meta import DatasetMeta
from sea_dist.data.dataset import load_dataset
from sea_dist.data.writer import write_dataset
from sea_dist.local_cache import cache_dir
from sea_dist.sources.synthetic import default_dataset_root

METRIC = "recall@20"


def yesterday_root(today: str, share: float = 0.9, seed: int = 0) -> str:
    root = os.path.join(cache_dir(), "bench", f"yesterday-{int(share * 100)}-{seed}-{os.path.basename(today)}")
    if os.path.exists(os.path.join(root, "dataset.json")):
        return root
    ds = load_dataset(today)
    order = np.random.default_rng(seed).permutation(len(ds.users))
    keep = np.sort(order[: int(share * len(order))])
    users, items, splits = ds.user_raw_ids[ds.users[keep]], ds.item_raw_ids[ds.items[keep]], ds.splits[keep]
    meta = DatasetMeta(
        name=ds.meta.name + "-yesterday", version=ds.meta.version + f"-first{int(share * 100)}",
        n_users=int(len(np.unique(users))), n_items=ds.n_items, n_interactions=len(users),
        modalities=dict(ds.meta.modalities),
        splits={n: int((splits == i).sum()) for i, n in enumerate(("train", "valid", "test"))},
    )
    write_dataset(root, meta, users, items, splits, ds.features, ds.item_raw_ids)
    return root


def curve(history: list[dict]) -> list[tuple[int, float, float]]:
    """(epoch, valid metric, cumulative train+eval seconds) per epoch."""
    out, elapsed = [], 0.0
    for record in history:
        elapsed += record["train_s"] + record["eval_s"]
        out.append((record["epoch"], record["valid"][METRIC], elapsed))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--mode", default="full_graph", choices=["full_graph", "sampled"])
    p.add_argument("--seed", type=int, default=999)
    args = p.parse_args()
    today = default_dataset_root()
    yesterday = yesterday_root(today)
    common = {"train.full_graph": args.mode == "full_graph", "train.epochs": args.epochs,
              "train.patience": args.epochs, "train.seed": args.seed}
    models = tempfile.mkdtemp(prefix="sea_models_")
    train({"data.root": yesterday, **common, "output.write_embeddings": True}, workdir=models)

    cold_summary, cold_history = train({"data.root": today, **common}, with_history=True)
    warm_summary, warm_history = train({"data.root": today, "train.warm_start": models, **common}, with_history=True)
    cold, warm = curve(cold_history), curve(warm_history)
    best_epoch, target, cold_seconds = max(cold, key=lambda row: (row[1], -row[0]))
    reached = next((row for row in warm if row[1] >= target), None)
    for name, rows in (("cold", cold), ("warm", warm)):
        emit({"benchmark": "warm_start", "run": name, "mode": args.mode,
              "valid_curve": [round(v, 5) for _e, v, _s in rows]})
    emit({
        "benchmark": "warm_start",
        "mode": args.mode,
        "cold_best_valid": target,
        "cold_epochs_to_best": best_epoch + 1,
        "cold_seconds_to_best": cold_seconds,
        "warm_epochs_to_cold_best": None if reached is None else reached[0] + 1,
        "warm_seconds_to_cold_best": None if reached is None else reached[2],
        "time_ratio_warm_over_cold": None if reached is None else reached[2] / cold_seconds,
        "warm_start": warm_summary.get("warm_start"),
        "warm_best_valid": warm_summary["valid"][METRIC],
        "goal_met": reached is not None and reached[2] <= 0.5 * cold_seconds,
    })


if __name__ == "__main__":
    main()
