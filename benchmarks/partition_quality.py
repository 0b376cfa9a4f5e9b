#!/usr/bin/env python
"""Partition quality: does partition-local training reach full-graph quality at P = 2, 4, 8?

One dataset from the streaming generator (planted signal, ``sea_dist.sources.synthetic_stream``),
one seed, one epoch budget (no early stopping), one global batch; then, each run a separate
process through the real entry points (``jobs/prepare.py``, ``jobs/train.py``):

* ``full_graph``: the reference computation, one process (``train.full_graph=true``);
* ``sampled``: replicated graph, 2 Ray workers (the DDP path without partitioning);
* ``partitioned``: ``train.partitioned=true`` with P = ``--parts`` Ray workers (oversubscribed
  on a small machine), one DGL partition each, for each of ``--methods`` (random, metis).

Evaluation compares like with like: every run ranks every user with held-out items against
every item (``eval.max_users`` stays 0; a partitioned worker ranks its own users, the union is
all users), and each row records how many users it evaluated. Rows (JSON lines, also written to
``--out``): ``mode``, ``parts``, ``part_method``, ``best_valid_recall@20``, ``best_epoch``,
``wall_s`` (the training loop: train + evaluate every epoch), ``process_wall_s`` (the whole
train process: start-up, data, Ray), ``prepare_wall_s`` (partitioned: the prepare job), and for
every non-full row ``over_full`` = its best validation Recall@20 / the full graph's of the same
training seed (or the first full-graph row when that seed has none: ``over_full_seed`` says
which). ``--seeds`` runs every configuration once per seed; with ``--append`` the rows already
in ``--out`` for the same tier and budget count too (add seeds run by run). A last ``summary``
row gives, per configuration, the best Recall@20 of each seed, their mean and the mean
``over_full``, and whether every partitioned configuration's mean is >= 0.98. Each row names
the commit it ran on (and whether the tree had local changes).

    python benchmarks/partition_quality.py                     # the issue's tier: 100k x 20k x 3M
    python benchmarks/partition_quality.py --tier small        # what fits a 2-core machine
    python benchmarks/partition_quality.py --tier tiny --epochs 2   # a smoke run, minutes
    python benchmarks/partition_quality.py --tier small --seeds 1000 --modes partitioned \
        --parts 4 --methods random --append    # one more seed of one row, against seed 1000's full graph

The default tier (about 100k users x 20k items x 3M interactions) is the largest where the
full graph still fits one process; on a shared 2-core machine its eight runs take days, so the
table in docs/scaling.md was measured on ``--tier small`` (named there).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))  # _runlog, _tiers, also when loaded by path

from _runlog import emit, git_state  # noqa: E402
from _tiers import stream_tier_root  # noqa: E402

METRIC = "recall@20"
GOAL = 0.98  # every partitioned row's best valid Recall@20 over the full graph's

# users, items, interactions (all splits). "issue": the tier of issue 12 (the full graph still
# fits one process); "small": 15 interactions per user like the bundled dataset, 40 clusters;
# "tiny": validates the benchmark itself in minutes.
TIERS = {
    "issue": (100_000, 20_000, 3_000_000),
    "small": (10_000, 4_000, 150_000),
    "tiny": (2_000, 1_000, 30_000),
}


def dataset(args: argparse.Namespace) -> str:
    """The tier's dataset under --data-dir, generated once (reused while the spec's version matches)."""
    return stream_tier_root(args.data_dir, "pq", args.users, args.items, args.interactions,
                            {"image": args.image_dim, "text": args.text_dim}, args.data_seed)


def run(cmd: list[str], log_path: str) -> tuple[float, str]:
    """Run a job (stderr to ``log_path``); (wall seconds, stdout). Raises with the log's tail."""
    started = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        with open(log_path) as f:
            raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}):\n{f.read()[-4000:]}")
    return wall, proc.stdout


def partitioned_valid_users(prepared_uri: str) -> tuple[int, bool]:
    """(users ranked at validation, whether no user is ranked twice) of a partitioned run: each
    worker ranks the owned users of its ``eval/part-<p>.parquet`` that have a validation row.
    (The run's own summary counts rank 0's users only.)"""
    import numpy as np
    import pyarrow.parquet as pq

    from sea_dist.storage.fs import make_filesystem

    fs, path = make_filesystem(prepared_uri)
    per_part = []
    for f in sorted(fs.glob(os.path.join(path, "eval", "part-*.parquet"))):
        with fs.open(f, "rb") as handle:
            t = pq.read_table(handle, columns=["user", "split"])
        users = t.column("user").to_numpy()
        per_part.append(np.unique(users[t.column("split").to_numpy() == 1]))
    union = np.unique(np.concatenate(per_part)) if per_part else np.empty(0)
    return int(union.size), int(sum(u.size for u in per_part)) == int(union.size)


def overrides(settings: dict) -> list[str]:
    return [f"{k}={v}" for k, v in settings.items()]


def train(settings: dict, logdir: str, name: str) -> dict:
    """One training run in its own process; its summary, per-epoch records and wall time."""
    outdir = tempfile.mkdtemp(prefix=f"pq_{name}_", dir=logdir)
    settings = {**settings, "output.output_dir": outdir, "output.write_embeddings": "false"}
    wall, _ = run([sys.executable, "jobs/train.py"] + overrides(settings), os.path.join(logdir, f"train-{name}.log"))
    with open(os.path.join(outdir, "MANIFEST.json")) as f:
        prefix = json.load(f)["prefix"]
    with open(os.path.join(outdir, prefix, "summary.json")) as f:
        summary = json.load(f)
    history = []
    for path in glob.glob(os.path.join(outdir, "metrics.jsonl")):
        with open(path) as f:
            history = [json.loads(line) for line in f if line.strip()]
    shutil.rmtree(outdir, ignore_errors=True)
    return {"summary": summary, "history": history, "process_wall_s": round(wall, 1)}


RUN_KEYS = ("tier", "users", "items", "interactions", "epochs", "batch_size")


def previous_rows(path: str, base: dict) -> list[dict]:
    """Run rows already in ``path`` for the same tier and budget (an appended rerun adds seeds
    or configurations to them; the summary and the yardsticks use them all)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if "mode" in r and all(r.get(k) == base[k] for k in RUN_KEYS)]


def summarise(rows: list[dict]) -> dict:
    """Per configuration (mode, P, partitioner): best validation Recall@20 per seed, its mean,
    and the mean of over_full, each row against the full graph of its own seed. One seed cannot
    tell a 1% gap from noise (the full graph's own seeds differ by about that much), so the goal
    is judged on the seed-averaged ratio."""
    configs: dict[str, dict] = {}
    for r in rows:
        key = f"{r['mode']}-p{r['parts']}" + (f"-{r['part_method']}" if r.get("part_method") else "")
        c = configs.setdefault(key, {"seeds": [], f"best_valid_{METRIC}": [], "over_full": []})
        c["seeds"].append(r["seed"])
        c[f"best_valid_{METRIC}"].append(r[f"best_valid_{METRIC}"])
        if "over_full" in r:
            c["over_full"].append(r["over_full"])
    for c in configs.values():
        values = c[f"best_valid_{METRIC}"]
        c[f"mean_best_valid_{METRIC}"] = round(sum(values) / len(values), 5)
        c["mean_over_full"] = round(sum(c["over_full"]) / len(c["over_full"]), 4) if c["over_full"] else None
    full = configs.get("full_graph-p1")
    partitioned = {k: c for k, c in configs.items() if k.startswith("partitioned") and c["mean_over_full"] is not None}
    return {
        "configs": configs,
        "full_graph_seed_spread": None if full is None else round(
            min(full[f"best_valid_{METRIC}"]) / max(full[f"best_valid_{METRIC}"]), 4),
        "min_partitioned_mean_over_full": min((c["mean_over_full"] for c in partitioned.values()), default=None),
        "goal": GOAL,
        "pass": bool(partitioned) and all(c["mean_over_full"] >= GOAL for c in partitioned.values()),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tier", choices=sorted(TIERS), default="issue", help="users x items x interactions preset")
    ap.add_argument("--users", type=int, help="override the tier's users")
    ap.add_argument("--items", type=int, help="override the tier's items")
    ap.add_argument("--interactions", type=int, help="override the tier's interactions (all splits)")
    ap.add_argument("--image-dim", type=int, default=256)
    ap.add_argument("--text-dim", type=int, default=128)
    ap.add_argument("--data-seed", type=int, default=7, help="generator seed")
    ap.add_argument("--epochs", type=int, default=10, help="epoch budget of every run (no early stopping)")
    ap.add_argument("--seed", type=int, default=999, help="training seed of every run (one seed)")
    ap.add_argument("--seeds", default="",
                    help="comma list of training seeds: every configuration runs once per seed (overrides "
                         "--seed); a row's over_full compares it with the full graph of its own seed")
    ap.add_argument("--batch-size", type=int, default=2048, help="global batch of every run")
    ap.add_argument("--modes", default="full_graph,sampled,partitioned")
    ap.add_argument("--parts", default="2,4,8", help="P of the partitioned runs")
    ap.add_argument("--methods", default="random,metis", help="partitioners of the partitioned runs")
    ap.add_argument("--sampled-workers", type=int, default=2)
    ap.add_argument("--full-seeds", default="",
                    help="extra full-graph runs with these training seeds (comma list): the reference's own "
                         "seed-to-seed spread, the yardstick for over_full")
    ap.add_argument("--set", action="append", default=[], help="extra override key=value for every run")
    ap.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "sea_partition_quality"))
    ap.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "partition_quality.jsonl"),
                    help="JSON lines file the rows are written to ('' = stdout only)")
    ap.add_argument("--append", action="store_true", help="append to --out instead of replacing it")
    args = ap.parse_args()
    seeds = [int(x) for x in args.seeds.split(",") if x] or [args.seed]
    users, items, interactions = TIERS[args.tier]
    args.users = args.users or users
    args.items = args.items or items
    args.interactions = args.interactions or interactions
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - {"full_graph", "sampled", "partitioned"}
    if unknown:
        ap.error(f"unknown modes {sorted(unknown)}")

    os.makedirs(args.data_dir, exist_ok=True)
    logdir = tempfile.mkdtemp(prefix="pq_logs_", dir=args.data_dir)
    t0 = time.monotonic()
    root = dataset(args)
    tier = {"tier": args.tier, "users": args.users, "items": args.items, "interactions": args.interactions}
    common = {
        "data.root": root,
        "train.epochs": args.epochs,
        "train.patience": args.epochs,  # the same budget for every run: no early stop
        "train.seed": args.seed,
        "train.batch_size": args.batch_size,
        "eval.max_users": 0,  # every user in every mode (partitioned: each worker its own)
        **dict(kv.split("=", 1) for kv in args.set),
    }
    base = {"benchmark": "partition_quality", **tier, **git_state(), "epochs": args.epochs, "seed": seeds[0],
            "batch_size": args.batch_size}
    earlier = previous_rows(args.out, base) if args.append and args.out else []
    out = None
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        out = open(args.out, "a" if args.append else "w")
    try:
        emit({**base, "stage": "start", "data_root": root, "generate_s": round(time.monotonic() - t0, 1),
              "logdir": logdir, "cpus": os.cpu_count(), "overrides": {k: v for k, v in common.items() if k != "data.root"}}, out)
        runs: list[tuple[str, int, str | None, dict]] = []
        for seed in seeds:
            if "full_graph" in modes:
                runs.append(("full_graph", 1, None, {"train.full_graph": "true", "train.seed": seed}))
            if "sampled" in modes:
                runs.append(("sampled", args.sampled_workers, None,
                             {"train.num_workers": args.sampled_workers, "train.seed": seed}))
            if "partitioned" in modes:
                for method in [m for m in args.methods.split(",") if m]:
                    for p in [int(p) for p in args.parts.split(",") if p]:
                        runs.append(("partitioned", p, method, {
                            "train.partitioned": "true", "train.num_workers": p, "train.seed": seed,
                            "prepare.num_parts": p, "prepare.part_method": method,
                        }))
        if "full_graph" in modes:
            for seed in [int(x) for x in args.full_seeds.split(",") if x and int(x) not in seeds]:
                runs.insert(0, ("full_graph", 1, None, {"train.full_graph": "true", "train.seed": seed}))
        # full-graph rows by seed: the yardsticks (earlier rows of this tier and budget first)
        fulls = {r["seed"]: r for r in earlier if r.get("mode") == "full_graph"}
        rows = []
        for mode, parts, method, extra in runs:
            settings = {**common, **extra}
            name = f"{mode}-p{parts}" + (f"-{method}" if method else "") + f"-s{settings['train.seed']}"
            prepare_wall = None
            prepare_info = {}
            if mode == "partitioned":  # timed on its own; the train run then reuses this version
                prepare_wall, stdout = run([sys.executable, "jobs/prepare.py"] + overrides(settings),
                                           os.path.join(logdir, f"prepare-{name}.log"))
                manifest = json.loads(stdout)
                n_valid_users, disjoint = partitioned_valid_users(manifest["uri"])
                prepare_info = {"prepare_reused": manifest.get("reused"),
                                "part_stats": manifest.get("partitions", {}).get("parts"),
                                "evaluated_valid_users": n_valid_users, "eval_users_disjoint": disjoint}
            code = git_state()  # per run: the tree may change during a long benchmark
            result = train(settings, logdir, name)
            s = result["summary"]
            best = s["valid"][METRIC]
            row = {
                **base,
                **code,
                "mode": mode,
                "parts": parts,
                "seed": int(settings["train.seed"]),
                "part_method": method,
                f"best_valid_{METRIC}": best,
                "best_epoch": s["best_epoch"],
                "epochs_run": s["epochs_run"],
                f"test_{METRIC}": s["test"][METRIC],
                f"popularity_test_{METRIC}": s.get(f"popularity_test_{METRIC}"),
                "evaluated_valid_users": s.get("evaluated_users", {}).get("valid"),  # partitioned: replaced below
                f"valid_{METRIC}_per_epoch": [round(h["valid"][METRIC], 5) for h in result["history"] if "valid" in h],
                "wall_s": round(s["wall_s"], 1),
                "process_wall_s": result["process_wall_s"],
                "prepare_wall_s": None if prepare_wall is None else round(prepare_wall, 1),
                "peak_rss_mb_per_worker": s.get("peak_rss_mb_per_worker"),
                **prepare_info,
            }
            if mode == "full_graph":
                fulls.setdefault(row["seed"], row)
            yardstick = fulls.get(row["seed"]) or (fulls[min(fulls)] if fulls else None)
            if yardstick is not None and yardstick is not row:
                row["over_full"] = round(best / yardstick[f"best_valid_{METRIC}"], 4)
                row["over_full_seed"] = yardstick["seed"]
                row["same_users_as_full"] = row["evaluated_valid_users"] == yardstick["evaluated_valid_users"]
            rows.append(row)
            emit(row, out)
        emit({**base, "stage": "summary", **summarise(earlier + rows),
              "all_same_users": all(r.get("same_users_as_full", True) for r in rows),
              "total_s": round(time.monotonic() - t0, 1)}, out)
    finally:
        if out is not None:
            out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
