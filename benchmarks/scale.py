#!/usr/bin/env python
"""Catalog-scale run on this machine, data in a moto S3 server on 127.0.0.1; JSON lines.

One record per stage, each stage a separate process measured from outside (``/usr/bin/time``
peak RSS, wall time):

* ``generate``: the streaming synthetic generator writes the tier to ``s3://bench/<tier>``;
* ``prepare``: ``jobs/prepare.py`` (kNN, DGL partitions, id maps) into the same bucket;
* ``train``: ``jobs/train.py train.partitioned=true`` with ``--workers`` Ray workers for
  ``--epochs`` epochs: edges/s per worker, peak RSS per worker, bytes read from S3 per epoch
  (feature rows) and once (the partition), memory of the graph and user-table shards.

``--parts 2,4`` repeats prepare + a short train (``--sweep-steps`` steps, no evaluation of
note) for each P on the same data and reports the per-worker graph and table memory, which
should fall roughly as 1/P. The moto server's own peak RSS is reported too (it holds the bucket
in memory, so it counts against the machine's 24 GiB).

    python benchmarks/scale.py --users 2000000 --items 200000 --interactions 50000000
    python benchmarks/scale.py --users 200000 --items 20000 --interactions 5000000 --parts 2,4

Training settings are the catalog ones (``TRAIN_DEFAULTS``): the per-edge cost on CPU is the
model's, so the benchmark uses small widths and few CLUB inner steps; override with
``--set key=value``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "bench"

# Batch: 131,072 triples per worker step. On CPU the cost of a step is dominated by the sampled
# frontier, which at this tier already covers a quarter of a partition's users at 8,192 triples
# per worker and saturates above: measured per worker step on the 2M tier, 8,192 triples 5.5 s,
# 32,768 8.9 s, 131,072 11.6 s, 524,288 14.5 s. A full epoch fits a session only at the large
# batch (~30 min instead of ~4 h); the GPU catalog config keeps 8,192 per worker.
# Those figures are the first generator's. With the clustered generator (v2, planted signal)
# a step's frontier is larger: 131,072 triples per worker took 9.9 GB per worker and Ray's
# memory monitor stopped the run on this 24 GiB machine, so the default is 65,536 per worker
# (~21.6 s per step, 20.7 GB in use at the peak; docs/scaling.md).
TRAIN_DEFAULTS = {
    "train.batch_size": 131072,
    "train.epochs": 1,
    "train.cpus_per_worker": 1,
    "graph.fanouts": "[5,5]",
    "graph.knn_fanout": 5,
    "model.embedding_dim": 32,
    "model.club_inner_steps": 5,
    "model.align_max_items": 4096,
    "eval.max_users": 20000,
    "output.write_embeddings": "false",
}


def emit(record: dict) -> None:
    print(json.dumps(record, sort_keys=True), flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _proc_status_mb(pid: int, field: str) -> float:
    """A memory field of ``/proc/<pid>/status`` (``VmHWM`` peak, ``VmRSS`` now) in MB; 0 if gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


class MotoServer:
    def __init__(self):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(self.url, timeout=1).close()
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("moto server did not start")
                time.sleep(0.2)
        import s3fs

        s3fs.S3FileSystem(client_kwargs={"endpoint_url": self.url}, skip_instance_cache=True).mkdir(BUCKET)

    def peak_rss_mb(self) -> float:
        return _proc_status_mb(self.proc.pid, "VmHWM")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


class MachineMemory:
    """Peak of the whole machine's used memory (MemTotal - MemAvailable) while a stage runs.

    Per-process peaks do not add up to the machine's: moto's peak is a transient of multipart
    uploads (its resident set falls back to ~1 GB afterwards), the workers peak mid-step. This
    is the figure that says whether a run fits the machine.
    """

    def __init__(self, interval_s: float = 0.5):
        self.interval_s = interval_s
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def used_mb() -> float:
        fields = {}
        with open("/proc/meminfo") as f:
            for line in f:
                key, value = line.split(":", 1)
                fields[key] = int(value.split()[0])
        return (fields["MemTotal"] - fields["MemAvailable"]) / 1024.0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self.used_mb())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "MachineMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def timed(cmd: list[str], log_path: str) -> dict:
    """Run ``cmd`` under GNU time; wall seconds, peak RSS (MB), the machine's peak use, stdout."""
    started = time.monotonic()
    with open(log_path, "w") as log, MachineMemory() as machine:
        proc = subprocess.run(
            ["/usr/bin/time", "-f", "MAXRSS_KB=%M"] + cmd, stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO
        )
    wall = time.monotonic() - started
    with open(log_path) as f:
        found = re.findall(r"MAXRSS_KB=(\d+)", f.read())
    if proc.returncode != 0:
        with open(log_path) as f:
            tail = f.read()[-4000:]
        raise RuntimeError(f"{' '.join(cmd[:3])} failed ({proc.returncode}):\n{tail}")
    return {"wall_s": round(wall, 1), "peak_rss_mb": round(int(found[-1]) / 1024.0, 1) if found else None,
            "machine_peak_used_mb": round(machine.peak_mb, 1), "stdout": proc.stdout}


def overrides(pairs: dict) -> list[str]:
    return [f"{k}={v}" for k, v in pairs.items()]


def prepare(root: str, endpoint: str, parts: int, logdir: str) -> dict:
    out = timed(
        [sys.executable, "jobs/prepare.py", f"data.root={root}", f"data.s3_endpoint_url={endpoint}",
         f"prepare.num_parts={parts}"],
        os.path.join(logdir, f"prepare-p{parts}.log"),
    )
    manifest = json.loads(out.pop("stdout"))
    return {"wall_s": out["wall_s"], "peak_rss_mb": out["peak_rss_mb"],
            "machine_peak_used_mb": out["machine_peak_used_mb"], "manifest": manifest}


def train(root: str, endpoint: str, parts: int, logdir: str, extra: dict, outdir: str = "", resume: bool = False) -> dict:
    keep = bool(outdir)
    outdir = outdir or tempfile.mkdtemp(prefix="sea_scale_out_", dir="/tmp")
    settings = {
        **TRAIN_DEFAULTS,
        "data.root": root,
        "data.s3_endpoint_url": endpoint,
        "train.partitioned": "true",
        "train.num_workers": parts,
        "prepare.num_parts": parts,
        "output.output_dir": outdir,
        **extra,
    }
    cmd = [sys.executable, "jobs/train.py"] + overrides(settings) + (["--resume"] if resume else [])
    out = timed(cmd, os.path.join(logdir, f"train-p{parts}.log"))
    with open(os.path.join(outdir, "MANIFEST.json")) as f:
        prefix = json.load(f)["prefix"]
    with open(os.path.join(outdir, prefix, "summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(outdir, "metrics.jsonl")) as f:
        history = [json.loads(line) for line in f if line.strip()]
    if not keep:
        shutil.rmtree(outdir, ignore_errors=True)
    return {"wall_s": out["wall_s"], "machine_peak_used_mb": out["machine_peak_used_mb"], "summary": summary,
            "settings": settings, "history": history}


def quality_curve(history: list[dict], metric: str = "recall@20") -> dict:
    """Validation metric after every epoch against the cumulative training + evaluation time,
    and the time at which the run first reached 90% of its best (time to quality)."""
    curve, elapsed = [], 0.0
    for record in (r for r in history if r.get("kind", "epoch") == "epoch" and "valid" in r):
        elapsed += float(record.get("train_s", 0.0)) + float(record.get("eval_s", 0.0))
        curve.append({"epoch": record["epoch"], f"valid_{metric}": record["valid"][metric], "elapsed_s": round(elapsed, 1)})
    best = max((c[f"valid_{metric}"] for c in curve), default=0.0)
    reached = next((c for c in curve if c[f"valid_{metric}"] >= 0.9 * best), None)
    return {
        "curve": curve,
        f"best_valid_{metric}": best,
        "time_to_90pct_best_s": reached["elapsed_s"] if reached else None,
        "epoch_to_90pct_best": reached["epoch"] if reached else None,
    }


def train_record(tier: dict, parts: int, result: dict) -> dict:
    s = result["summary"]
    part = s["partition"]
    t = s["throughput"]
    return {
        "stage": "train",
        **tier,
        "workers": parts,
        "epochs": s["epochs_run"],
        "wall_s": result["wall_s"],
        "machine_peak_used_mb": result["machine_peak_used_mb"],
        "triples_per_worker_step": int(result["settings"]["train.batch_size"]) // parts,
        "train_s_per_epoch": round(t["train_s_per_epoch"], 1),
        "train_edges_per_s_per_worker": round(t["train_edges_per_s_per_worker"], 1),
        # a capped run's full epoch: every worker's share of the train edges at its measured rate
        "projected_full_epoch_s": round(s["dataset"]["n_train"] / parts / max(t["train_edges_per_s_per_worker"], 1e-9), 1),
        "sampling_s_per_epoch": round(t["sampling_s_per_epoch"], 1),
        "feature_fetch_s_per_epoch": round(t["feature_fetch_s_per_epoch"], 1),
        "model_s_per_epoch": round(t["model_s_per_epoch"], 1),
        "club_fit_s_per_epoch": round(t["club_fit_s_per_epoch"], 1),
        "eval_s_per_epoch": round(t["eval_s_per_epoch"], 1),
        # the step loop waiting for the input thread (sampling + feature fetch, prefetched)
        "input_wait_s_per_epoch": round(t.get("input_wait_s_per_epoch", 0.0), 1),
        "prefetch_batches": s["config"]["train"].get("prefetch_batches"),
        "peak_rss_mb_per_worker": s["peak_rss_mb_per_worker"],
        "graph_mb_per_worker": part["graph_mb_per_worker"],
        "user_table_rows_per_worker": part["user_table_rows_per_worker"],
        "user_table_mb_per_worker": part["user_table_mb_per_worker"],
        "s3_partition_bytes_per_worker": part["partition_bytes_read_per_worker"],
        "s3_feature_bytes_per_epoch_per_worker": part["feature_bytes_read_per_epoch_per_worker"],
        "feature_cache_hit_ratio_per_worker": part["feature_cache_hit_ratio_per_worker"],
        "table_traffic_per_step_per_worker": part["table_traffic_per_step_per_worker"],
        "mean_input_users_per_step_per_worker": part.get("mean_input_users_per_step_per_worker"),
        "mean_input_items_per_step_per_worker": part.get("mean_input_items_per_step_per_worker"),
        "mean_block_edges_per_step_per_worker": part.get("mean_block_edges_per_step_per_worker"),
        "valid_recall@20": s["valid"].get("recall@20"),
        "popularity_test_recall@20": s.get("popularity_test_recall@20"),
        "popularity_valid_recall@20": s.get("popularity_valid_recall@20"),
        **quality_curve(result["history"]),
        "settings": {k: v for k, v in result["settings"].items() if not k.startswith(("data.", "output."))},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=2_000_000)
    ap.add_argument("--items", type=int, default=200_000)
    ap.add_argument("--interactions", type=int, default=50_000_000)
    ap.add_argument("--workers", type=int, default=2, help="workers (= partitions) of the main run")
    ap.add_argument("--parts", default="", help="comma list of P for the memory sweep (e.g. 2,4); empty = none")
    ap.add_argument("--max-steps", type=int, default=0,
                    help="cap the main run's steps (0 = full epochs); the record then projects the epoch time")
    ap.add_argument("--sweep-steps", type=int, default=3, help="training steps per sweep run")
    ap.add_argument("--skip-main", action="store_true", help="only the --parts sweep")
    ap.add_argument("--set", action="append", default=[], help="extra train override key=value")
    ap.add_argument("--logdir", default="", help="stage logs (default: a temp dir)")
    ap.add_argument("--epochs", type=int, default=1, help="epochs of the main run (a validation point after each)")
    ap.add_argument("--output-dir", default="",
                    help="keep the main run's outputs and checkpoints here (default: a temp dir, removed)")
    ap.add_argument("--resume", action="store_true",
                    help="continue the main run in --output-dir from its last checkpoint (the data is "
                         "regenerated identically and prepare reuses its version)")
    args = ap.parse_args()
    extra = dict(kv.split("=", 1) for kv in args.set)
    logdir = args.logdir or tempfile.mkdtemp(prefix="sea_scale_logs_", dir="/tmp")
    os.makedirs(logdir, exist_ok=True)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    tier = {"users": args.users, "items": args.items, "interactions": args.interactions}
    machine_before = MachineMemory.used_mb()
    emit({"stage": "start", **tier, "logdir": logdir, "cpus": os.cpu_count(), "machine_used_mb": round(machine_before, 1)})
    moto = MotoServer()
    try:
        root = f"s3://{BUCKET}/catalog-{args.users}x{args.items}x{args.interactions}"
        gen = timed(
            [sys.executable, "-m", "sea_dist.sources.synthetic", "--users", str(args.users), "--items", str(args.items),
             "--interactions", str(args.interactions), "--out", root, "--s3-endpoint-url", moto.url],
            os.path.join(logdir, "generate.log"),
        )
        emit({"stage": "generate", **tier, "wall_s": gen["wall_s"], "peak_rss_mb": gen["peak_rss_mb"],
              "machine_peak_used_mb": gen["machine_peak_used_mb"]})
        if args.resume and not args.output_dir:
            ap.error("--resume needs --output-dir (where the run's checkpoints are)")
        main_extra = {"train.epochs": args.epochs}
        if args.max_steps:
            main_extra["train.max_steps_per_epoch"] = args.max_steps
        runs = [] if args.skip_main else [(args.workers, main_extra, False)]
        main_outdir = os.path.abspath(args.output_dir) if args.output_dir else ""
        # the sweep keeps the smaller batch of its recorded figures (benchmarks/results/scale_sweep_400k.jsonl)
        runs += [(int(p), {"train.max_steps_per_epoch": args.sweep_steps, "eval.max_users": 2000,
                           "train.batch_size": 16384}, True)
                 for p in args.parts.split(",") if p]
        for parts, run_extra, sweep in runs:
            prep = prepare(root, moto.url, parts, logdir)
            m = prep["manifest"]
            emit({
                "stage": "prepare", **tier, "parts": parts, "wall_s": prep["wall_s"],
                "peak_rss_mb": prep["peak_rss_mb"], "machine_peak_used_mb": prep["machine_peak_used_mb"], "reused": m["reused"], "method": m["partitions"]["method"],
                "knn": m["knn"], "timings": m["timings"], "bytes": m["bytes"], "part_stats": m["partitions"]["parts"],
            })
            result = train(root, moto.url, parts, logdir, {**extra, **run_extra},
                           outdir="" if sweep else main_outdir, resume=args.resume and not sweep)
            emit({**train_record(tier, parts, result), "sweep": sweep})
        emit({"stage": "moto", "peak_rss_mb": round(moto.peak_rss_mb(), 1), "rss_mb_at_end": round(_proc_status_mb(moto.proc.pid, "VmRSS"), 1),
              "machine_used_mb_before_start": round(machine_before, 1)})
    finally:
        moto.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
