"""Benchmark datasets: the bundled default, and the Baby tier built on the *real* Amazon Baby
interaction graph (datasets/amazon-baby, MMRec's ids and split) with generated features
of MMRec's dims (image 4096, text 384), so sampling cost follows a real degree distribution."""
from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq

from sea_dist.data.meta import DatasetMeta
from sea_dist.data.writer import write_dataset
from sea_dist.local_cache import cache_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BABY_DIR = os.path.join(REPO, "datasets", "amazon-baby")
BABY_DIMS = {"image": 4096, "text": 384}


def _clustered_features(n: int, dim: int, clusters: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    centres = rng.normal(size=(int(clusters.max()) + 1, dim)).astype(np.float32)
    return centres[clusters] + 0.5 * rng.normal(size=(n, dim)).astype(np.float32)


def baby_root(seed: int = 0) -> str:
    """Local dataset root of the Baby tier (built once into the cache)."""
    root = os.path.join(cache_dir(), "bench", f"amazon-baby-real-graph-s{seed}")
    if os.path.exists(os.path.join(root, "dataset.json")):
        return root
    table = pq.read_table(os.path.join(BABY_DIR, "interactions.parquet"))
    users = table.column("user_id").to_numpy()
    items = table.column("item_id").to_numpy()
    splits = table.column("split").to_numpy().astype(np.int8)
    item_ids = np.arange(int(items.max()) + 1, dtype=np.int64)
    rng = np.random.default_rng(seed)
    clusters = rng.integers(0, 50, size=len(item_ids))  # items share look/wording within a cluster
    features = {m: _clustered_features(len(item_ids), d, clusters, rng) for m, d in BABY_DIMS.items()}
    meta = DatasetMeta(
        name="amazon-baby-real-graph",
        version=f"baby-graph-generated-features-s{seed}",
        n_users=int(len(np.unique(users))),
        n_items=len(item_ids),
        n_interactions=len(users),
        modalities=dict(BABY_DIMS),
        splits={n: int((splits == i).sum()) for i, n in enumerate(("train", "valid", "test"))},
    )
    write_dataset(root, meta, users, items, splits, features, item_ids)
    return root


def tier_root(name: str) -> str:
    if name == "default":
        return ""
    if name == "baby":
        return baby_root()
    raise SystemExit(f"unknown tier {name!r}: use default or baby")


def stream_tier_root(data_dir: str, prefix: str, users: int, items: int, interactions: int,
                     dims: dict[str, int], seed: int) -> str:
    """A streamed-generator tier under ``data_dir``, generated once: reused while its
    ``dataset.json`` records the version this spec would write (same counts, dims, seed and
    generator), regenerated otherwise."""
    import json
    import sys

    from sea_dist.sources.stream_spec import StreamSpec
    from sea_dist.sources.stream_writer import _spec_version, write_stream

    spec = StreamSpec(n_users=users, n_items=items, n_interactions=interactions, modalities=dict(dims),
                      seed=seed, name=f"{prefix}-{users}x{items}x{interactions}", users_per_chunk=50_000)
    root = os.path.join(data_dir, spec.name)
    meta_path = os.path.join(root, "dataset.json")
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            if json.load(f)["version"] == _spec_version(spec):
                return root
    write_stream(spec, root, progress=lambda s: print(f"[generate] {s}", file=sys.stderr, flush=True))
    return root
