#!/usr/bin/env python
"""The overlapped input pipeline: per-step time with inputs prepared inline vs ahead; JSON lines.

For each mode (sampled with 2 workers, partitioned with P=2) the same run twice, side by side
in one invocation: ``train.prefetch_batches=0`` (sample + fetch + compute per step) and the
default look-ahead (the next steps' sampling and feature fetch on the input thread while the
step computes). Per step: the wall time, the input work (sampling + feature fetch, wherever it
ran), the compute (model + Q fit) and the time the loop waited for inputs. The ideal overlapped
step costs ``max(input, compute)``; the inline one ``input + compute``.

    python benchmarks/pipeline.py                  # bundled default dataset, 2 epochs per run
    python benchmarks/pipeline.py --root s3://... --set data.s3_endpoint_url=http://...
"""
from __future__ import annotations

import argparse

from _common import emit, train


def per_step(history: list[dict]) -> dict:
    epochs = [r for r in history if r.get("kind", "epoch") == "epoch" and r.get("steps")]
    steps = sum(r["steps"] for r in epochs)
    total = lambda key: sum(float(r.get(key, 0.0)) for r in epochs)  # noqa: E731
    step_s = total("train_s") / steps
    inputs_s = (total("sampling_s") + total("feature_fetch_s")) / steps
    compute_s = (total("model_s") + total("club_fit_s")) / steps
    return {
        "steps": steps,
        "step_s": round(step_s, 4),
        "input_s": round(inputs_s, 4),
        "compute_s": round(compute_s, 4),
        "input_wait_s": round(total("input_wait_s") / steps, 4),
        "step_over_max_input_compute": round(step_s / max(inputs_s, compute_s, 1e-9), 3),
        "step_over_sum_input_compute": round(step_s / max(inputs_s + compute_s, 1e-9), 3),
        "best_valid_recall@20": max(r["valid"]["recall@20"] for r in epochs),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="", help="dataset root (default: the bundled default dataset)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--modes", default="sampled,partitioned")
    ap.add_argument("--depth", type=int, default=2, help="the look-ahead compared with inline")
    ap.add_argument("--set", action="append", default=[], help="extra override key=value")
    args = ap.parse_args()
    extra = dict(kv.split("=", 1) for kv in args.set)
    if args.root:
        extra["data.root"] = args.root
    for mode in args.modes.split(","):
        mode_overrides = {"train.partitioned": "true"} if mode == "partitioned" else {}
        rows = {}
        for depth in (0, args.depth):
            overrides = {
                "train.epochs": args.epochs, "train.num_workers": 2, "train.prefetch_batches": depth,
                **mode_overrides, **extra,
            }
            summary, history = train(overrides, with_history=True)
            rows[depth] = per_step(history)
            exchange = summary.get("partition", {}).get("inference_exchange_rank0")
            emit({"mode": mode, "prefetch_batches": depth, "epochs": args.epochs,
                  "dataset": summary["dataset"]["name"], **rows[depth],
                  **({"inference_exchange_rank0": exchange} if exchange else {})})
        emit({"mode": mode, "summary": True,
              "step_ahead_over_inline": round(rows[args.depth]["step_s"] / rows[0]["step_s"], 3),
              "same_best_valid_recall@20": rows[args.depth]["best_valid_recall@20"] == rows[0]["best_valid_recall@20"]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
