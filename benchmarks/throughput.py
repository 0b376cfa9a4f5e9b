#!/usr/bin/env python
"""Throughput of sampled training (2 Ray workers) on two tiers, JSON lines on stdout.

- ``default``: the bundled default dataset (5k users, 2k items, image 256 + text 128);
- ``baby``: the real Amazon Baby interaction graph (19,445 users, 7,050 items, 160,792
  interactions, datasets/amazon-baby) with generated features of MMRec's dims (image 4096,
  text 384).

Per tier: train edges/s per worker, sampling / model / CLUB-fit seconds per epoch (measured
over ``--steps`` batches and scaled to a full epoch), and full-ranking evaluation seconds.
Figures depend on the machine's load: compare ratios between runs on the same machine.

    python benchmarks/throughput.py [--tiers default,baby] [--steps 10] [--workers 2]
"""
from __future__ import annotations

import argparse
import os

from _common import emit, train

from _tiers import tier_root


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiers", default="default,baby")
    p.add_argument("--steps", type=int, default=10, help="batches per epoch to time (0 = all)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--full-graph", action="store_true", help="time the full-graph mode instead")
    args = p.parse_args()
    for tier in args.tiers.split(","):
        summary = train(
            {
                "data.root": tier_root(tier),
                "train.full_graph": args.full_graph,
                "train.num_workers": args.workers,
                "train.epochs": 1,
                "train.max_steps_per_epoch": args.steps,
            }
        )
        t = summary["throughput"]
        history_steps = summary["epochs_run"] and args.steps
        n_train = summary["dataset"]["n_train"]
        steps_per_epoch = -(-n_train // 2048)
        scale = steps_per_epoch / history_steps if history_steps else 1.0
        emit(
            {
                "benchmark": "throughput",
                "tier": tier,
                "mode": summary["mode"],
                "world_size": summary["world_size"],
                "n_users": summary["dataset"]["n_users"],
                "n_items": summary["dataset"]["n_items"],
                "n_train": n_train,
                "modalities": summary["dataset"]["modalities"],
                "timed_steps": history_steps or steps_per_epoch,
                "train_edges_per_s_per_worker": t["train_edges_per_s_per_worker"],
                "train_edges_per_s": t["train_edges_per_s"],
                "sampling_s_per_epoch": t["sampling_s_per_epoch"] * scale,
                "feature_fetch_s_per_epoch": t["feature_fetch_s_per_epoch"] * scale,
                "model_s_per_epoch": t["model_s_per_epoch"] * scale,
                "club_fit_s_per_epoch": t["club_fit_s_per_epoch"] * scale,
                "epoch_s_estimate": t["train_s_per_epoch"] * scale,
                "eval_s": t["eval_s_per_epoch"],
                "peak_rss_mb_per_worker": summary["peak_rss_mb_per_worker"],
            }
        )


if __name__ == "__main__":
    main()
