"""The prepare job: a dataset root -> ``<root>/prepared/<version>/`` that partitioned training reads.

Steps (each logs its progress and duration; their figures go into the manifest):

1. **Version.** A hash of the inputs (``dataset.json`` and every shard's path, size and
   ETag/mtime) and of the settings that shape the output (P, partitioner, kNN). A complete
   version (its ``MANIFEST.json`` exists: written last) is reused as is, so a rerun with the
   same inputs and config does nothing; changed inputs give a new version beside the old one.
2. **Load and validate** the dataset (the data contract's checks, errors name file and row).
3. **kNN graph per modality**: blocked exact top-k up to ``prepare.exact_knn_max_items`` items,
   our IVF search above (``docs/knn.md``), mixed into SEA's ``S`` as the reference does.
4. **Partition** the training graph with DGL (METIS or random, see
   :mod:`sea_dist.graph.partition` for what each partition holds and the halo).
5. **Id maps** (Parquet, prepared id -> raw id, with the training degree) so serving and the
   exporters can translate back, and each partition's **held-out edges** (valid/test) of the
   users it owns, for partition-local evaluation.
6. **Upload** everything from the local scratch directory, then the manifest.

Layout::

    <root>/prepared/<version>/MANIFEST.json
    <root>/prepared/<version>/id_maps/{users,items}.parquet
    <root>/prepared/<version>/eval/part-<p>.parquet     # user, item (prepared ids), split 1|2
    <root>/prepared/<version>/partitions/train.json     # DGL partition config
    <root>/prepared/<version>/partitions/part<p>/...    # DGL graph + local.npz side file
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from sea_dist.config import Config
from sea_dist.storage.errors import DatasetError
from sea_dist.data.dataset import load_dataset
from sea_dist.storage.fs import make_filesystem
from sea_dist.storage.ids import ids_to_arrow
from sea_dist.graph.ann import topk_cosine
from sea_dist.graph.knn import mixed_knn_graph
from sea_dist.graph.partition import choose_part_method, write_partitions
from sea_dist.model.normalization import modality_mix_weights
from sea_dist.storage.retry import configure_storage, with_retries

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the layout changes: old versions are then rebuilt, not misread
MANIFEST = "MANIFEST.json"


@dataclass
class Prepared:
    """A complete prepared version: where it is and what its manifest says."""

    uri: str  # <root>/prepared/<version> with the root's scheme
    manifest: dict
    reused: bool

    @property
    def num_parts(self) -> int:
        return int(self.manifest["partitions"]["num_parts"])


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def num_parts_for(cfg: Config) -> int:
    return cfg.prepare.num_parts or cfg.train.num_workers


def prepare_settings(cfg: Config) -> dict:
    """Every setting that changes the prepared output (and so the version)."""
    return {
        "format": FORMAT,
        "num_parts": num_parts_for(cfg),
        "part_method": cfg.prepare.part_method,
        "metis_max_edges": cfg.prepare.metis_max_edges,
        "knn_k": cfg.graph.knn_k,
        "mm_image_weight": cfg.graph.mm_image_weight,
        "modality_weights": list(cfg.graph.modality_weights),
        "exact_knn_max_items": cfg.prepare.exact_knn_max_items,
        "knn_nprobe": cfg.prepare.knn_nprobe,
    }


def input_fingerprint(fs, path: str) -> dict:
    """``dataset.json``'s bytes and every shard's (path, size, ETag or mtime), hashed.

    Listing metadata rather than content: hashing 50M interactions' bytes would cost a full
    read; object stores change the ETag (and file systems the mtime) on every rewrite.
    """
    meta_path = posixpath.join(path, "dataset.json")
    if not fs.exists(meta_path):
        raise DatasetError(f"{meta_path}: no dataset.json (is this a dataset root?)")
    digest = hashlib.sha256(fs.cat_file(meta_path))
    shards = []
    for folder in ("interactions", "features"):
        base = posixpath.join(path, folder)
        if not fs.exists(base):
            continue
        for name, info in sorted(fs.find(base, detail=True).items()):
            if not name.endswith(".parquet"):
                continue
            stamp = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified")
            shards.append([posixpath.relpath(name, path), int(info.get("size") or 0), str(stamp)])
    digest.update(json.dumps(shards).encode())
    return {"sha256": digest.hexdigest(), "shards": len(shards)}


def prepared_root(cfg: Config) -> tuple[object, str, str]:
    fs, path = make_filesystem(cfg.data.root, cfg.data.s3_endpoint_url)
    scheme = cfg.data.root.split("://", 1)[0] + "://" if "://" in cfg.data.root else ""
    return fs, path, scheme


def resolve_version(cfg: Config) -> tuple[str, dict]:
    fs, path, _ = prepared_root(cfg)
    inputs = with_retries(lambda: input_fingerprint(fs, path), f"listing {cfg.data.root}")
    settings = prepare_settings(cfg)
    key = hashlib.sha256(json.dumps([inputs["sha256"], settings], sort_keys=True).encode())
    return f"p{settings['num_parts']}-{key.hexdigest()[:12]}", {"inputs": inputs, "settings": settings}


def find_prepared(cfg: Config) -> Prepared | None:
    """The complete prepared version for these inputs and settings, if it exists."""
    fs, path, scheme = prepared_root(cfg)
    version, _ = resolve_version(cfg)
    folder = posixpath.join(path, "prepared", version)
    manifest = _read_manifest(fs, posixpath.join(folder, MANIFEST))
    return None if manifest is None else Prepared(scheme + folder, manifest, reused=True)


def _read_manifest(fs, manifest_path: str) -> dict | None:
    """A prepared version's manifest, or None where there is none (storage faults retried)."""

    def read() -> bytes | None:
        return fs.cat_file(manifest_path) if fs.exists(manifest_path) else None

    raw = with_retries(read, f"reading {manifest_path}")
    return None if raw is None else json.loads(raw)


def load_prepared(uri: str, s3_endpoint_url: str = "") -> Prepared:
    fs, path = make_filesystem(uri, s3_endpoint_url)
    manifest = _read_manifest(fs, posixpath.join(path, MANIFEST))
    if manifest is None:
        raise DatasetError(f"{uri}: no {MANIFEST} (not a complete prepared version; rerun prepare)")
    if manifest.get("format") != FORMAT:
        raise DatasetError(f"{uri}: prepared format {manifest.get('format')} != {FORMAT}; rerun prepare")
    return Prepared(uri, manifest, reused=True)


def run_prepare(cfg: Config) -> Prepared:
    """Build (or reuse) the prepared version for ``cfg``; returns where it is."""
    if not cfg.data.root:
        raise DatasetError("prepare needs data.root (a local path or s3:// URI)")
    configure_storage(cfg.data)  # this run's S3 retry settings for every client made below
    fs, path, scheme = prepared_root(cfg)
    version, identity = resolve_version(cfg)
    folder = posixpath.join(path, "prepared", version)
    uri = scheme + folder
    existing = None if cfg.prepare.force else _read_manifest(fs, posixpath.join(folder, MANIFEST))
    if existing is not None:
        log.info(f"[prepare] {uri} is up to date (same inputs and settings): nothing to do")
        return Prepared(uri, existing, reused=True)

    started = time.monotonic()
    timings: dict[str, float] = {}
    log.info(f"[prepare] building {uri}")

    tick = time.monotonic()
    log.info("[prepare] loading and validating the dataset")
    ds = with_retries(lambda: load_dataset(cfg.data.root, cfg.data.s3_endpoint_url), f"reading {cfg.data.root}")
    train_users, train_items = ds.split_edges(0)
    timings["load_s"] = time.monotonic() - tick
    log.info(f"[prepare] {ds.n_users:,} users, {ds.n_items:,} items, {len(train_users):,} train interactions "
             f"({timings['load_s']:.1f}s)")

    tick = time.monotonic()
    approximate = ds.n_items > cfg.prepare.exact_knn_max_items
    knn_method = "ivf" if approximate else "exact"
    log.info(f"[prepare] kNN graphs (k={cfg.graph.knn_k}, {knn_method}) for {', '.join(ds.features)}")

    def search(features: np.ndarray, k: int) -> torch.Tensor:
        return topk_cosine(
            features,
            k,
            exact_max_items=cfg.prepare.exact_knn_max_items,
            block_size=cfg.graph.knn_block_size,
            nprobe=cfg.prepare.knn_nprobe,
        )

    mix = modality_mix_weights(list(ds.features), cfg.graph.mm_image_weight, cfg.graph.modality_weights)
    knn_rows, knn_cols, knn_w = mixed_knn_graph(ds.features, cfg.graph.knn_k, mix, cfg.graph.knn_block_size, search)
    timings["knn_s"] = time.monotonic() - tick
    log.info(f"[prepare] kNN: {knn_rows.numel():,} edges ({timings['knn_s']:.1f}s)")

    # release what the partitioner does not need before its memory-hungry passes
    held_out = {s: ds.split_edges(s) for s in (1, 2)}
    user_raw, item_raw = ds.user_raw_ids, ds.item_raw_ids
    meta = ds.meta
    n_users, n_items = ds.n_users, ds.n_items
    del ds

    num_parts = num_parts_for(cfg)
    method = choose_part_method(cfg.prepare.part_method, len(train_users), cfg.prepare.metis_max_edges)
    scratch_parent = cfg.prepare.work_dir or None
    if scratch_parent:
        os.makedirs(scratch_parent, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="sea_prepare_", dir=scratch_parent)
    try:
        tick = time.monotonic()
        log.info(f"[prepare] partitioning into {num_parts} parts ({method})")
        layout = write_partitions(
            n_users, n_items, train_users, train_items, knn_rows, knn_cols, knn_w,
            user_raw, item_raw, num_parts, method, os.path.join(scratch, "partitions"),
        )
        timings["partition_s"] = time.monotonic() - tick
        log.info(f"[prepare] partitioned ({timings['partition_s']:.1f}s)")

        tick = time.monotonic()
        _write_id_maps(scratch, layout, user_raw, item_raw, train_users, train_items)
        eval_counts = _write_held_out(scratch, layout, held_out)
        timings["id_maps_s"] = time.monotonic() - tick

        tick = time.monotonic()
        log.info(f"[prepare] uploading to {uri}")
        def clear() -> None:  # an interrupted earlier attempt (no manifest): start clean
            if fs.exists(folder):
                fs.rm(folder, recursive=True)

        with_retries(clear, f"clearing {uri}")
        with_retries(lambda: fs.put(scratch.rstrip("/") + "/", folder, recursive=True), f"uploading {uri}")
        timings["upload_s"] = time.monotonic() - tick
        uploaded = _folder_bytes(scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    timings["total_s"] = time.monotonic() - started
    manifest = {
        "format": FORMAT,
        "version": version,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": {
            "name": meta.name,
            "version": meta.version,
            "n_users": n_users,
            "n_items": n_items,
            "n_train": int(len(train_users)),
            "n_valid": eval_counts[1],
            "n_test": eval_counts[2],
            "modalities": dict(meta.modalities),
        },
        **identity,
        "knn": {"method": knn_method, "k": cfg.graph.knn_k, "mix": mix, "edges": int(knn_rows.numel())},
        "partitions": layout.to_manifest(),
        "bytes": uploaded,
        "timings": {k: round(v, 2) for k, v in timings.items()},
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }
    with_retries(
        lambda: fs.pipe_file(posixpath.join(folder, MANIFEST), json.dumps(manifest, indent=2).encode()),
        f"writing {uri}/{MANIFEST}",
    )
    log.info(f"[prepare] done in {timings['total_s']:.1f}s: {uri} ({uploaded / 1e6:.1f} MB)")
    return Prepared(uri, manifest, reused=False)


def _folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


def _write_id_maps(scratch, layout, user_raw, item_raw, train_users, train_items) -> None:
    os.makedirs(os.path.join(scratch, "id_maps"))
    for name, new_to_old, raw, edges in (
        ("users", layout.user_new_to_old, user_raw, train_users),
        ("items", layout.item_new_to_old, item_raw, train_items),
    ):
        degree = np.bincount(edges, minlength=len(raw))
        table = pa.table(
            {
                name[:-1]: pa.array(np.arange(len(raw), dtype=np.int64)),
                "raw_id": ids_to_arrow(raw[new_to_old]),
                "train_degree": pa.array(degree[new_to_old].astype(np.int64)),
            }
        )
        pq.write_table(table, os.path.join(scratch, "id_maps", f"{name}.parquet"), row_group_size=1 << 20)


def _write_held_out(scratch, layout, held_out) -> dict[int, int]:
    """Each partition's valid/test edges of the users it owns, in prepared ids."""
    os.makedirs(os.path.join(scratch, "eval"))
    user_old_to_new = np.empty(len(layout.user_new_to_old), dtype=np.int64)
    user_old_to_new[layout.user_new_to_old] = np.arange(len(layout.user_new_to_old))
    item_old_to_new = np.empty(len(layout.item_new_to_old), dtype=np.int64)
    item_old_to_new[layout.item_new_to_old] = np.arange(len(layout.item_new_to_old))
    users = np.concatenate([user_old_to_new[held_out[s][0]] for s in (1, 2)])
    items = np.concatenate([item_old_to_new[held_out[s][1]] for s in (1, 2)])
    splits = np.concatenate([np.full(len(held_out[s][0]), s, dtype=np.int8) for s in (1, 2)])
    owner = np.searchsorted(np.asarray(layout.user_offsets[1:]), users, side="right")
    for part in range(layout.num_parts):
        mask = owner == part
        pq.write_table(
            pa.table({"user": users[mask], "item": items[mask], "split": splits[mask]}),
            os.path.join(scratch, "eval", f"part-{part}.parquet"),
        )
    return {s: int(len(held_out[s][0])) for s in (1, 2)}
