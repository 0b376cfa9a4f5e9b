"""Write a streaming synthetic catalog (:mod:`sea_dist.sources.synthetic_stream`) into the data contract.

One user chunk's interactions and one feature row group at a time, straight to a local path or
``s3://``; ``dataset.json`` last, with the exact counts. Progress goes to the ``progress``
callback, by default this module's logger.
"""
from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import time
from dataclasses import asdict
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from sea_dist.data.meta import SPLIT_NAMES, DatasetMeta, drop_meta, write_meta
from sea_dist.sources.stream_spec import STREAM_GENERATOR_VERSION, StreamSpec, check_stream_spec
from sea_dist.sources.synthetic_stream import StreamModel, feature_groups
from sea_dist.storage.fs import make_filesystem
from sea_dist.storage.shards import reset_shards, shard_name, write_parquet

__all__ = ["write_stream"]

log = logging.getLogger(__name__)


def _spec_version(spec: StreamSpec) -> str:
    blob = json.dumps(asdict(spec)).encode()
    return f"stream{STREAM_GENERATOR_VERSION}-seed{spec.seed}-{hashlib.sha256(blob).hexdigest()[:12]}"


def _write_features(fs: Any, path: str, model: StreamModel, say: Callable[[str], None]) -> None:
    spec = model.spec
    I = spec.n_items
    np_dtype = np.float16 if spec.feature_dtype == "float16" else np.float32
    pa_dtype = pa.float16() if spec.feature_dtype == "float16" else pa.float32()
    n_shards = -(-I // spec.items_per_shard)
    id_base, id_step = (10**6, 7) if spec.sparse_ids else (0, 1)
    for mi, m in enumerate(model.mods):
        dim = int(spec.modalities[m])
        folder = posixpath.join(path, "features", m)
        reset_shards(fs, folder)
        schema = pa.schema([("item_id", pa.int64()), ("embedding", pa.list_(pa_dtype, dim))])
        t0 = time.perf_counter()
        for k in range(n_shards):

            def groups(k: int = k, mi: int = mi):
                for a, b, x in feature_groups(model, mi, k):
                    vals = pa.array(x.astype(np_dtype, copy=False).reshape(-1), pa_dtype)
                    ids = pa.array(id_base + id_step * np.arange(a, b, dtype=np.int64), pa.int64())
                    yield pa.Table.from_arrays([ids, pa.FixedSizeListArray.from_arrays(vals, dim)], schema=schema), b - a

            write_parquet(fs, posixpath.join(folder, shard_name(k, n_shards)), schema, groups(), use_dictionary=False)
        say(f"features[{m}]: {I} x {dim} in {n_shards} shard(s), {time.perf_counter() - t0:.1f}s")


def write_stream(
    spec: StreamSpec, root: str, s3_endpoint_url: str = "", progress: Callable[[str], None] | None = log.info
) -> str:
    """Generate ``spec`` chunk by chunk into ``root`` (local path, ``file://`` or ``s3://``).

    Memory: the item latents plus one user chunk's interactions and candidate blocks (~ a few
    hundred MB at 2M x 200k x 50M with the default chunk size), independent of n_users and
    n_interactions. ``dataset.json`` is written last with the exact counts.
    """
    say = progress or (lambda _msg: None)
    check_stream_spec(spec)
    t_start = time.perf_counter()
    fs, path = make_filesystem(root, s3_endpoint_url)
    fs.makedirs(path, exist_ok=True)
    drop_meta(fs, path)

    model = StreamModel(spec)
    say(f"latents: {spec.n_items} items in {model.n_clusters} clusters ({time.perf_counter() - t_start:.1f}s)")
    _write_features(fs, path, model, say)

    ifolder = posixpath.join(path, "interactions")
    reset_shards(fs, ifolder)
    schema = pa.schema([("user_id", pa.int64()), ("item_id", pa.int64()), ("split", pa.int8())])
    uid_base, uid_step, iid_base, iid_step = (1000, 3, 10**6, 7) if spec.sparse_ids else (0, 1, 0, 1)
    n_chunks = model.n_chunks
    total, split_counts = 0, np.zeros(3, dtype=np.int64)
    t0 = time.perf_counter()
    for c in range(n_chunks):
        users, items, splits = model.sample_chunk(c)
        total += users.size
        split_counts += np.bincount(splits, minlength=3)
        table = pa.Table.from_arrays(
            [
                pa.array(uid_base + uid_step * users if spec.sparse_ids else users, pa.int64()),
                pa.array(iid_base + iid_step * items if spec.sparse_ids else items, pa.int64()),
                pa.array(splits, pa.int8()),
            ],
            schema=schema,
        )
        del users, items, splits
        write_parquet(fs, posixpath.join(ifolder, shard_name(c, n_chunks)), schema, [(table, None)])
        del table
        dt = time.perf_counter() - t0
        say(f"interactions chunk {c + 1}/{n_chunks}: {total} rows, {total / max(dt, 1e-9):,.0f} rows/s")

    meta = DatasetMeta(
        name=spec.name,
        version=_spec_version(spec),
        n_users=spec.n_users,
        n_items=spec.n_items,
        n_interactions=int(total),
        modalities={m: int(spec.modalities[m]) for m in model.mods},
        splits={name: int(split_counts[k]) for k, name in enumerate(SPLIT_NAMES)},
    )
    write_meta(fs, path, meta)
    say(
        f"wrote {root}: {meta.n_users} users, {meta.n_items} items, {meta.n_interactions} interactions "
        f"(requested {spec.n_interactions}) in {time.perf_counter() - t_start:.1f}s"
    )
    return root
