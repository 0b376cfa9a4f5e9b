"""Shared by the benchmark scripts: build a config, run it through the real launcher, emit JSON."""
from __future__ import annotations

import json
import os
import sys
import tempfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from sea_dist.config import Config  # noqa: E402
from sea_dist.config import apply_overrides  # noqa: E402
from sea_dist.train.launcher import run  # noqa: E402


def emit(record: dict) -> None:
    print(json.dumps(record, sort_keys=True), flush=True)


def train(overrides: dict, workdir: str | None = None, with_history: bool = False):
    """Trains with ``overrides`` (dotted keys) into a fresh output dir; returns the published
    summary (and the per-epoch records of metrics.jsonl with ``with_history``)."""
    workdir = workdir or tempfile.mkdtemp(prefix="sea_bench_")
    cfg = apply_overrides(Config(), {"output.output_dir": workdir, "output.write_embeddings": False, **overrides})
    summary = run(cfg)
    if not with_history:
        return summary
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return summary, [json.loads(line) for line in f if line.strip()]
