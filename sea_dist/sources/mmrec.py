"""Import a dataset in MMRec's format into the sea_dist data contract, keeping its split.

``python -m sea_dist.sources.mmrec DIR [--out ROOT] [--name NAME]``

MMRec's format (the MMRec toolbox's ``data/<dataset>/`` folders, which SEA's reference code
reads as is)::

    DIR/<name>.inter     TAB-separated text with a header line; columns include userID, itemID,
                         x_label (0 train, 1 valid, 2 test), usually also rating and timestamp
    DIR/image_feat.npy   float32 [n_items, 4096], row i = itemID i   (optional)
    DIR/text_feat.npy    float32 [n_items, 384],  row i = itemID i   (optional; at least one)

What is written (``ROOT`` defaults to ``DIR/sea_dist``; any URI :func:`make_filesystem` takes):

* ``dataset.json``: name (the ``.inter`` stem or ``--name``), version ``mmrec-<sha256 of the
  inputs' bytes>`` (so a re-import of the same files is recognisably the same data), counts,
  modalities in the order ``image`` then ``text`` (with two modalities our model gives the first
  one the reference's *image* role), split counts. Written last; an old one is removed first.
* ``interactions/part-*.parquet``: ``user_id``/``item_id`` int64 (MMRec's ids as raw ids),
  ``split`` int8 = ``x_label``, row for row in the ``.inter`` file's order. Other columns
  (rating, timestamp) are not imported: MMRec treats every row as an implicit interaction and
  the split is already fixed by ``x_label``.
* ``features/<modality>/part-*.parquet``: one row per row of the ``.npy`` (item ids
  ``0..rows-1``; rows beyond the largest itemID are kept as items without interactions),
  ``fixed_size_list<float32|float16>``, no dictionaries, row groups of ``row_group_size``.

Only modality files that exist are imported. The ``.inter`` file is read in blocks with
``pyarrow.csv`` (only the three needed columns, as int64), the ``.npy`` files through a memory
map, and features are written one row group at a time, so memory stays at the interaction
arrays (17 bytes a row) plus one row group, whatever the feature size.

Checks, each a :class:`MMRecError` naming the file: no ``.inter`` file (or several and no
``--name``), missing columns, unparsable or empty values, negative ids, ``x_label`` outside
{0, 1, 2}, duplicate (userID, itemID) rows, a split with no rows, no modality file, a feature
file that is not a 2-d float array, has an odd dim (SEA splits every modality in halves), fewer
rows than the largest itemID + 1, a row count that differs from the other modality's, or NaN/inf.
MMRec itself drops valid/test rows of users without training rows
(``filter_out_cod_start_users``) when it loads; we keep every row, so the split is kept row for
row and that filter stays the trainer's decision.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import posixpath
import sys
import time
from typing import Callable

import numpy as np
import pyarrow as pa

from sea_dist.data.meta import SPLIT_NAMES, DatasetMeta, drop_meta, write_meta
from sea_dist.sources.mmrec_inter import MMRecError, count_distinct, find_inter_file, read_inter
from sea_dist.storage.fs import make_filesystem
from sea_dist.storage.shards import reset_shards, shard_name, write_parquet

__all__ = [
    "MODALITY_FILES",
    "import_mmrec",
    "main",
]

#: (modality, file name) in the order they enter ``dataset.json``: image first (reference role).
MODALITY_FILES: tuple[tuple[str, str], ...] = (("image", "image_feat.npy"), ("text", "text_feat.npy"))
_IMPORT_FORMAT = b"sea_dist mmrec import v1\0"  # part of the version hash
_HASH_BYTES = 8 << 20


def _open_features(path: str, modality: str) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise MMRecError(f"{path}: not a readable .npy array ({e})") from e
    if arr.ndim != 2:
        raise MMRecError(f"{path}: expected a 2-d array [n_items, dim] for modality {modality!r}, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise MMRecError(f"{path}: expected float features for modality {modality!r}, got dtype {arr.dtype}")
    if arr.shape[1] < 2 or arr.shape[1] % 2:
        raise MMRecError(
            f"{path}: feature dim {arr.shape[1]} of modality {modality!r} must be even and >= 2 "
            "(SEA splits each modality into generic/unique halves)"
        )
    return arr


def _check_finite(path: str, modality: str, arr: np.ndarray, block_rows: int) -> None:
    for lo in range(0, arr.shape[0], block_rows):
        block = np.asarray(arr[lo : lo + block_rows], dtype=np.float32)
        bad_rows = np.flatnonzero(~np.isfinite(block).all(axis=1))
        if bad_rows.size:
            r = lo + int(bad_rows[0])
            kind = "NaN" if np.isnan(block[bad_rows[0]]).any() else "inf (or a value beyond float32)"
            raise MMRecError(f"{path}: {kind} in row {r} (itemID {r}, modality {modality!r})")


def _content_version(files: list[tuple[str, str]]) -> str:
    """sha256 over the inputs' bytes, each under its role (so renaming a file keeps the version)."""
    h = hashlib.sha256(_IMPORT_FORMAT)
    for role, path in files:
        h.update(f"{role}\0{os.path.getsize(path)}\0".encode())
        with open(path, "rb") as f:
            while chunk := f.read(_HASH_BYTES):
                h.update(chunk)
    return f"mmrec-{h.hexdigest()[:16]}"


def import_mmrec(
    src: str,
    out: str | None = None,
    name: str | None = None,
    *,
    s3_endpoint_url: str = "",
    feature_dtype: str = "float32",
    items_per_shard: int = 100_000,
    interactions_per_shard: int = 1_000_000,
    row_group_size: int = 8192,
    progress: Callable[[str], None] | None = None,
) -> str:
    """Convert the MMRec dataset folder ``src`` into a dataset root (default ``src/sea_dist``).

    Everything is checked before anything is written. Returns the output root.
    """
    if feature_dtype not in ("float32", "float16"):
        raise ValueError(f"feature_dtype must be 'float32' or 'float16', got {feature_dtype!r}")
    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    inter_path, ds_name = find_inter_file(src, name)
    present = [(m, os.path.join(src, f)) for m, f in MODALITY_FILES if os.path.isfile(os.path.join(src, f))]
    if not present:
        wanted = ", ".join(f for _, f in MODALITY_FILES)
        raise MMRecError(f"{src}: no modality feature file found (need at least one of {wanted})")
    # open (header checks) before the possibly long .inter read, so shape errors come first
    feats = {m: _open_features(p, m) for m, p in present}

    inter = read_inter(inter_path, say)
    need = int(inter.items.max()) + 1
    n_items = None
    first_path = ""
    for m, p in present:
        arr = feats[m]
        if arr.shape[0] < need:
            raise MMRecError(
                f"{p}: {arr.shape[0]} feature rows, but {os.path.basename(inter_path)} has itemID up to "
                f"{need - 1} (needs at least {need} rows, row i = itemID i; modality {m!r})"
            )
        if n_items is None:
            n_items, first_path = arr.shape[0], p
        elif arr.shape[0] != n_items:
            raise MMRecError(
                f"{p}: {arr.shape[0]} feature rows, but {first_path} has {n_items}; every modality needs "
                "one row per item"
            )
        _check_finite(p, m, arr, row_group_size)
    assert n_items is not None
    if n_items > need:
        say(f"note: {n_items - need} item(s) have features but no interactions; they are kept as items")

    version = _content_version([("inter", inter_path)] + present)
    split_counts = np.bincount(inter.splits, minlength=3)
    meta = DatasetMeta(
        name=ds_name,
        version=version,
        n_users=count_distinct(inter.users),
        n_items=int(n_items),
        n_interactions=inter.n,
        modalities={m: int(feats[m].shape[1]) for m, _ in present},
        splits={s: int(split_counts[k]) for k, s in enumerate(SPLIT_NAMES)},
    )

    root = out or os.path.join(src, "sea_dist")
    fs, path = make_filesystem(root, s3_endpoint_url)
    fs.makedirs(path, exist_ok=True)
    drop_meta(fs, path)

    ifolder = posixpath.join(path, "interactions")
    reset_shards(fs, ifolder)
    ischema = pa.schema([("user_id", pa.int64()), ("item_id", pa.int64()), ("split", pa.int8())])
    E = inter.n
    per = max(1, interactions_per_shard)
    n_ishards = max(1, -(-E // per))
    for k in range(n_ishards):
        lo, hi = k * per, min(E, (k + 1) * per)
        t = pa.Table.from_arrays(
            [pa.array(inter.users[lo:hi]), pa.array(inter.items[lo:hi]), pa.array(inter.splits[lo:hi])],
            schema=ischema,
        )
        write_parquet(fs, posixpath.join(ifolder, shard_name(k, n_ishards)), ischema, [(t, None)])
    say(f"interactions: {E} rows in {n_ishards} shard(s)")

    np_dtype = np.float16 if feature_dtype == "float16" else np.float32
    pa_dtype = pa.float16() if feature_dtype == "float16" else pa.float32()
    n_fshards = max(1, -(-n_items // max(1, items_per_shard)))
    for m, _ in present:
        arr, dim = feats[m], int(feats[m].shape[1])
        folder = posixpath.join(path, "features", m)
        reset_shards(fs, folder)
        schema = pa.schema([("item_id", pa.int64()), ("embedding", pa.list_(pa_dtype, dim))])
        for k in range(n_fshards):
            lo, hi = k * items_per_shard, min(n_items, (k + 1) * items_per_shard)

            def groups(lo: int = lo, hi: int = hi, arr: np.ndarray = arr, dim: int = dim, schema: pa.Schema = schema):
                for a in range(lo, hi, row_group_size):
                    b = min(hi, a + row_group_size)
                    vals = np.ascontiguousarray(arr[a:b], dtype=np_dtype).reshape(-1)
                    emb = pa.FixedSizeListArray.from_arrays(pa.array(vals, pa_dtype), dim)
                    yield pa.Table.from_arrays([pa.array(np.arange(a, b, dtype=np.int64)), emb], schema=schema), b - a

            write_parquet(fs, posixpath.join(folder, shard_name(k, n_fshards)), schema, groups(), use_dictionary=False)
        say(f"features[{m}]: {n_items} x {dim} in {n_fshards} shard(s)")

    write_meta(fs, path, meta)
    say(
        f"wrote {root}: {meta.name} {meta.version}, {meta.n_users} users, {meta.n_items} items, "
        f"{meta.n_interactions} interactions, modalities {meta.modalities} in {time.perf_counter() - t0:.1f}s"
    )
    return root


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m sea_dist.sources.mmrec DIR [--out ROOT] [--name NAME]``."""
    p = argparse.ArgumentParser(
        prog="python -m sea_dist.sources.mmrec",
        description="Convert an MMRec dataset folder (<name>.inter + image_feat.npy/text_feat.npy) "
        "into the sea_dist data contract, keeping its train/valid/test split (x_label).",
    )
    p.add_argument("dir", help="MMRec dataset folder (local)")
    p.add_argument("--out", default=None, help="dataset root: local path, file:// or s3:// URI (default: DIR/sea_dist)")
    p.add_argument("--name", default=None, help="use DIR/NAME.inter (needed when DIR has several); also the dataset name")
    p.add_argument("--feature-dtype", choices=("float32", "float16"), default="float32")
    p.add_argument("--items-per-shard", type=int, default=100_000)
    p.add_argument("--interactions-per-shard", type=int, default=1_000_000)
    p.add_argument("--row-group-size", type=int, default=8192)
    p.add_argument("--s3-endpoint-url", default="", help="S3 endpoint override (S3-compatible stores)")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        import_mmrec(
            a.dir,
            a.out,
            a.name,
            s3_endpoint_url=a.s3_endpoint_url,
            feature_dtype=a.feature_dtype,
            items_per_shard=a.items_per_shard,
            interactions_per_shard=a.interactions_per_shard,
            row_group_size=a.row_group_size,
            progress=lambda s: print(f"[{time.perf_counter() - t0:6.1f}s] {s}", flush=True),
        )
    except ValueError as e:  # MMRecError is a DatasetError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
