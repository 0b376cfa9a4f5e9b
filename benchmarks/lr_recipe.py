#!/usr/bin/env python
"""Large-batch lr recipe: the reference lr vs lr scaling + warm-up at catalog batch sizes.

Why: the reference lr (1e-4) was tuned at a global batch of 2,048 triples. At the catalog's
8,192 and 131,072 triples per worker an epoch has 4-64x (x workers) fewer optimizer steps, so a
constant lr learns far less per epoch. ``train.lr_scaling`` (sqrt | linear in global batch /
``train.lr_reference_batch``) and ``train.warmup_steps`` are the recipe; this benchmark measures
which default to ship (``sea_dist/train/lr_schedule.py``).

One dataset from the streaming generator (planted signal, ``sea_dist.sources.synthetic_stream``),
one training seed, the same epoch budget for every run (no early stopping); for every per-worker
batch in ``--batches`` and every variant in ``--variants``, one ``jobs/train.py`` run in its own
process (``--workers`` local Ray workers, sampled mode; ``--mode full_graph`` runs one process
on the same global batch). Variants are ``name:scaling:warmup_frac``: the warm-up is that
fraction of the first epoch's optimizer steps, rounded up, at least 2 (0 = none), recorded per
row.

Rows (JSON lines, also written to ``--out``): ``batch_per_worker``, ``global_batch``,
``variant``, ``lr_scaling``, ``warmup_steps``, ``peak_lr``, ``steps_per_epoch``,
``valid_recall@20_per_epoch`` (the curve; ``valid_recall@20_at`` picks epochs ``--report-at``),
``popularity_valid_recall@20`` / ``popularity_test_recall@20`` (the baseline), the best epoch's
test Recall@20, ``wall_s`` (the training loop), ``wall_s_at`` (training + evaluation up to
that epoch), ``process_wall_s`` (the whole train process: start-up, data, Ray). A last
``summary`` row names, per batch, the variant with the best Recall@20 at each reported epoch
(with ``--append``, over the rows already in ``--out`` for the same tier and budget as well).

    python benchmarks/lr_recipe.py                          # 20k x 4k x 400k, 2 workers, 4 epochs
    python benchmarks/lr_recipe.py --users 100000 --items 20000 --interactions 3000000  # issue tier
    python benchmarks/lr_recipe.py --users 2000 --items 1000 --interactions 30000 --epochs 1 \\
        --batches 1024 --variants ref:none:0 --mode full_graph --out ''       # a smoke run

Training settings are the catalog-benchmark ones of ``benchmarks/scale.py`` (fanouts [5,5],
kNN fanout 5, k = 32, 5 CLUB inner steps, Solosim over 4,096 items): a step stays affordable at
131k triples per worker on CPU. Override with ``--set key=value``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))  # _runlog, _tiers, also when loaded by path

from sea_dist.config import Config  # noqa: E402
from _runlog import emit, git_state  # noqa: E402
from _tiers import stream_tier_root  # noqa: E402
from sea_dist.train.lr_schedule import scaled_lr  # noqa: E402

METRIC = "recall@20"
TRAIN_DEFAULTS = {  # as benchmarks/scale.py: a step stays affordable at catalog batch sizes on CPU
    "graph.fanouts": "[5,5]",
    "graph.knn_fanout": 5,
    "model.embedding_dim": 32,
    "model.club_inner_steps": 5,
    "model.align_max_items": 4096,
    "train.cpus_per_worker": 1,
    "eval.max_users": 0,  # every user with a held-out item, every run
}
DEFAULT_VARIANTS = "reference:none:0,sqrt:sqrt:0.05,linear:linear:0.05"  # warm-up: 5% of epoch 1, >= 2 steps
#: lines of a failed run's log that say the shared machine failed it (memory, a Ray start-up
#: timeout under load), not a bug
TRANSIENT = ("running low on memory", "OutOfMemoryError", "Killed", "timed out during startup")


def dataset(args: argparse.Namespace) -> tuple[str, dict]:
    """The tier under --data-dir (generated once per spec version) and its dataset.json."""
    root = stream_tier_root(args.data_dir, "lr", args.users, args.items, args.interactions,
                            {"image": args.image_dim, "text": args.text_dim}, args.data_seed)
    with open(os.path.join(root, "dataset.json")) as f:
        return root, json.load(f)


def steps_per_epoch(n_train: int, global_batch: int, world_size: int) -> int:
    """As ``EpochPlan.num_steps``: full batches plus a last partial one every worker gets a triple of."""
    full, rest = divmod(n_train, global_batch)
    return full + (1 if rest >= world_size else 0)


def warmup_steps(frac: float, steps: int) -> int:
    """``frac`` of the first epoch's steps, rounded up; at least 2 when asked for (a warm-up of
    one step is none: ``lr_at`` gives step 0 the peak lr)."""
    return max(2, int(math.ceil(frac * steps))) if frac > 0 else 0


def parse_variants(text: str) -> list[tuple[str, str, float]]:
    variants = []
    for item in filter(None, text.split(",")):
        name, scaling, frac = item.split(":")
        variants.append((name, scaling, float(frac)))
    return variants


def train(settings: dict, logdir: str, name: str, retries: int) -> dict:
    """One run in its own process; its summary, per-epoch records and wall time. A run the
    machine failed (killed by Ray's memory monitor, Ray not starting in time on a machine shared
    with other work) is retried."""
    for attempt in range(retries + 1):
        outdir = tempfile.mkdtemp(prefix=f"lr_{name}_", dir=logdir)
        cmd = [sys.executable, "jobs/train.py"] + [f"{k}={v}" for k, v in
                                                   {**settings, "output.output_dir": outdir,
                                                    "output.write_embeddings": "false"}.items()]
        log_path = os.path.join(logdir, f"train-{name}-{attempt}.log")
        started = time.monotonic()
        with open(log_path, "w") as log:
            proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log)
        wall = time.monotonic() - started
        with open(log_path) as f:
            text = f.read()
        if proc.returncode == 0:
            break
        shutil.rmtree(outdir, ignore_errors=True)
        if attempt == retries or not any(t in text for t in TRANSIENT):
            raise RuntimeError(f"{name} failed ({proc.returncode}), log {log_path}:\n{text[-4000:]}")
        print(f"[retry] {name}: failed by the machine, attempt {attempt + 2}", file=sys.stderr, flush=True)
    with open(os.path.join(outdir, "MANIFEST.json")) as f:
        prefix = json.load(f)["prefix"]
    with open(os.path.join(outdir, prefix, "summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(outdir, "metrics.jsonl")) as f:
        history = [json.loads(line) for line in f if line.strip()]
    shutil.rmtree(outdir, ignore_errors=True)
    return {"summary": summary, "history": history, "process_wall_s": round(wall, 1), "attempts": attempt + 1}


def previous_rows(path: str, base: dict) -> list[dict]:
    """Run rows already in ``path`` for the same tier, budget, seed and mode (an appended rerun)."""
    if not os.path.exists(path):
        return []
    keys = ("users", "items", "interactions", "epochs", "seed", "mode", "workers", "lr")
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if r.get("stage") == "run" and all(r.get(k) == base[k] for k in keys)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--items", type=int, default=4_000)
    ap.add_argument("--interactions", type=int, default=400_000, help="all splits")
    ap.add_argument("--image-dim", type=int, default=256)
    ap.add_argument("--text-dim", type=int, default=128)
    ap.add_argument("--data-seed", type=int, default=7, help="generator seed")
    ap.add_argument("--epochs", type=int, default=4, help="epoch budget of every run (no early stopping)")
    ap.add_argument("--report-at", default="1,2,4", help="epochs whose Recall@20 the rows pick out")
    ap.add_argument("--seed", type=int, default=999, help="training seed of every run")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--mode", choices=("sampled", "full_graph"), default="sampled",
                    help="sampled: --workers Ray workers; full_graph: one process, same global batch")
    ap.add_argument("--batches", default="8192,131072", help="triples per worker per step")
    ap.add_argument("--variants", default=DEFAULT_VARIANTS, help="name:lr_scaling:warmup_frac_of_epoch1, ...")
    ap.add_argument("--lr", type=float, default=Config().train.lr, help="the reference lr")
    ap.add_argument("--set", action="append", default=[], help="extra override key=value for every run")
    ap.add_argument("--retries", type=int, default=1, help="reruns of a run the machine failed (memory, Ray start-up)")
    ap.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "sea_lr_recipe"))
    ap.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "lr_recipe.jsonl"),
                    help="JSON lines file the rows are written to ('' = stdout only)")
    ap.add_argument("--append", action="store_true", help="append to --out instead of replacing it")
    args = ap.parse_args()
    variants = parse_variants(args.variants)
    batches = [int(b) for b in args.batches.split(",") if b]
    report_at = [int(e) for e in args.report_at.split(",") if e and int(e) <= args.epochs]

    os.makedirs(args.data_dir, exist_ok=True)
    logdir = tempfile.mkdtemp(prefix="lr_logs_", dir=args.data_dir)
    t0 = time.monotonic()
    root, meta = dataset(args)
    n_train = int(meta["splits"]["train"])
    world = args.workers
    common = {
        **TRAIN_DEFAULTS,
        "data.root": root,
        "train.epochs": args.epochs,
        "train.patience": args.epochs + 1,  # the same budget for every run: no early stop
        "train.seed": args.seed,
        "train.lr": args.lr,
        **({"train.full_graph": "true"} if args.mode == "full_graph" else {"train.num_workers": world}),
        **dict(kv.split("=", 1) for kv in args.set),
    }
    reference_batch = int(common.get("train.lr_reference_batch", Config().train.lr_reference_batch))
    base = {"benchmark": "lr_recipe", "users": args.users, "items": args.items, "interactions": args.interactions,
            "n_train": n_train, "epochs": args.epochs, "seed": args.seed, "mode": args.mode, "workers": world,
            "lr": args.lr, "lr_reference_batch": reference_batch, **git_state()}
    out = None
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        out = open(args.out, "a" if args.append else "w")
    rows = previous_rows(args.out, base) if args.append and args.out else []
    try:
        emit({**base, "stage": "start", "data_root": root, "generate_s": round(time.monotonic() - t0, 1),
              "logdir": logdir, "cpus": os.cpu_count(), "load_avg": os.getloadavg(),
              "overrides": {k: v for k, v in common.items() if k != "data.root"}}, out)
        for per_worker in batches:
            global_batch = per_worker * world
            steps = steps_per_epoch(n_train, global_batch, 1 if args.mode == "full_graph" else world)
            for name, scaling, frac in variants:
                warm = warmup_steps(frac, steps)
                settings = {**common, "train.batch_size": global_batch, "train.lr_scaling": scaling,
                            "train.warmup_steps": warm}
                load_before = os.getloadavg()[0]
                result = train(settings, logdir, f"b{per_worker}-{name}", args.retries)
                s, history = result["summary"], result["history"]
                curve = [round(h["valid"][METRIC], 5) for h in history]
                elapsed, cumulative = 0.0, []
                for h in history:
                    elapsed += h["train_s"] + h["eval_s"]
                    cumulative.append(round(elapsed, 1))
                row = {
                    **base,
                    "stage": "run",
                    "batch_per_worker": per_worker,
                    "global_batch": global_batch,
                    "variant": name,
                    "lr_scaling": scaling,
                    "warmup_frac": frac,
                    "warmup_steps": warm,
                    "peak_lr": scaled_lr(args.lr, global_batch, reference_batch, scaling),
                    "steps_per_epoch": steps,
                    "steps_run": [h["steps"] for h in history],
                    f"valid_{METRIC}_per_epoch": curve,
                    f"valid_{METRIC}_at": {str(e): curve[e - 1] for e in report_at if e <= len(curve)},
                    f"best_valid_{METRIC}": s["valid"][METRIC],
                    "best_epoch": s["best_epoch"],
                    f"test_{METRIC}_at_best": s["test"][METRIC],
                    "loss_per_epoch": [round(h["loss"]["total"], 5) for h in history],
                    f"popularity_valid_{METRIC}": s.get(f"popularity_valid_{METRIC}"),
                    f"popularity_test_{METRIC}": s.get(f"popularity_test_{METRIC}"),
                    "wall_s": round(s["wall_s"], 1),
                    "wall_s_at": {str(e): cumulative[e - 1] for e in report_at if e <= len(cumulative)},
                    "process_wall_s": result["process_wall_s"],
                    "attempts": result["attempts"],
                    "peak_rss_mb_per_worker": s.get("peak_rss_mb_per_worker"),
                    "load_avg_1m_before": round(load_before, 1),
                }
                rows.append(row)
                emit(row, out)
        best = {}
        for per_worker in sorted({r["batch_per_worker"] for r in rows}):
            mine = [r for r in rows if r["batch_per_worker"] == per_worker]
            best[str(per_worker)] = {
                str(e): max(mine, key=lambda r: r[f"valid_{METRIC}_at"].get(str(e), -1.0))["variant"] for e in report_at
            }
        emit({**base, "stage": "summary", "best_variant_by_epoch": best,
              "total_s": round(time.monotonic() - t0, 1)}, out)
    finally:
        if out is not None:
            out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
