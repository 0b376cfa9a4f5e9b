#!/usr/bin/env python
"""Fidelity: full-graph mode (the reference computation) vs sampled mode (2 Ray workers).

Same dataset, seed and epoch budget. Prints one JSON line per run and a comparison line per
other mode with ``<mode>_over_full`` = its best valid Recall@20 / full-graph's (acceptance for
sampled: >= 0.98). ``--modes full_graph,sampled,partitioned`` adds partition-local training
(prepare job + one DGL partition per worker, sharded user tables). ``--club-fit both`` also
compares the two CLUB fitting modes.

    python benchmarks/fidelity.py [--epochs 20] [--root DATASET] [--modes ...] [--club-fit as_published|within_modality|both]
"""
from __future__ import annotations

import argparse

from _common import emit, train

METRIC = "recall@20"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--root", default="", help="dataset root (default: bundled default dataset)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=999)
    p.add_argument("--club-fit", default="as_published", choices=["as_published", "within_modality", "both"])
    p.add_argument("--modes", default="full_graph,sampled", help="which of full_graph,sampled,partitioned to run")
    args = p.parse_args()
    club_modes = ["as_published", "within_modality"] if args.club_fit == "both" else [args.club_fit]
    for club_fit in club_modes:
        results = {}
        for mode in args.modes.split(","):
            summary = train(
                {
                    "data.root": args.root,
                    "train.full_graph": mode == "full_graph",
                    "train.partitioned": mode == "partitioned",
                    "train.num_workers": args.workers,
                    "train.epochs": args.epochs,
                    "train.patience": args.epochs,
                    "train.seed": args.seed,
                    "model.club_fit": club_fit,
                }
            )
            results[mode] = summary
            emit(
                {
                    "benchmark": "fidelity",
                    "mode": mode,
                    "club_fit": club_fit,
                    "world_size": summary["world_size"],
                    "epochs": summary["epochs_run"],
                    "best_epoch": summary["best_epoch"],
                    f"best_valid_{METRIC}": summary["valid"][METRIC],
                    f"test_{METRIC}": summary["test"][METRIC],
                    "test_ndcg@20": summary["test"]["ndcg@20"],
                    f"popularity_test_{METRIC}": summary["popularity_test_recall@20"],
                    "train_s_per_epoch": summary["throughput"]["train_s_per_epoch"],
                    "wall_s": summary["wall_s"],
                }
            )
        if "full_graph" not in results:
            continue
        full = results["full_graph"]["valid"][METRIC]
        for mode in results:
            if mode == "full_graph":
                continue
            other = results[mode]["valid"][METRIC]
            emit(
                {
                    "benchmark": "fidelity",
                    "club_fit": club_fit,
                    "full_graph_best_valid": full,
                    f"{mode}_best_valid": other,
                    f"{mode}_over_full": other / full if full else None,
                    "pass": bool(full and other / full >= 0.98),
                }
            )


if __name__ == "__main__":
    main()
