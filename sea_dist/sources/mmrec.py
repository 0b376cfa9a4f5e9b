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
import glob
import hashlib
import json
import os
import posixpath
import sys
import time
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from sea_dist.data.meta import SPLIT_NAMES, DatasetMeta
from sea_dist.storage.errors import DatasetError
from sea_dist.storage.fs import make_filesystem

__all__ = [
    "MMRecError",
    "MODALITY_FILES",
    "INTER_COLUMNS",
    "MMRecInteractions",
    "find_inter_file",
    "read_inter",
    "import_mmrec",
    "main",
]

#: (modality, file name) in the order they enter ``dataset.json``: image first (reference role).
MODALITY_FILES: tuple[tuple[str, str], ...] = (("image", "image_feat.npy"), ("text", "text_feat.npy"))
#: the .inter columns we need (MMRec's USER_ID_FIELD, ITEM_ID_FIELD, inter_splitting_label).
INTER_COLUMNS: tuple[str, str, str] = ("userID", "itemID", "x_label")

_IMPORT_FORMAT = b"sea_dist mmrec import v1\0"  # part of the version hash
_BLOCK_BYTES = 16 << 20  # .inter read block
_HASH_BYTES = 8 << 20


class MMRecError(DatasetError):
    """The MMRec input breaks the format; the message names the file and the problem."""


class MMRecInteractions:
    """The three columns of a ``.inter`` file, in file order."""

    def __init__(self, path: str, users: np.ndarray, items: np.ndarray, splits: np.ndarray):
        self.path, self.users, self.items, self.splits = path, users, items, splits

    @property
    def n(self) -> int:
        return int(self.users.size)


def find_inter_file(src: str, name: str | None = None) -> tuple[str, str]:
    """(path, dataset name) of the ``.inter`` file in ``src``: ``<name>.inter`` or the only one."""
    if not os.path.isdir(src):
        raise MMRecError(f"{src}: not a directory (expected an MMRec dataset folder)")
    found = sorted(glob.glob(os.path.join(glob.escape(src), "*.inter")))
    if name:
        path = os.path.join(src, f"{name}.inter")
        if not os.path.isfile(path):
            have = ", ".join(os.path.basename(f) for f in found) or "none"
            raise MMRecError(f"{path}: interaction file missing (.inter files in {src}: {have})")
        return path, name
    if not found:
        raise MMRecError(f"{src}: no <name>.inter interaction file (MMRec format: TAB-separated, with a header)")
    if len(found) > 1:
        names = ", ".join(os.path.basename(f) for f in found)
        raise MMRecError(f"{src}: several .inter files ({names}); pick one with --name NAME")
    return found[0], os.path.basename(found[0])[: -len(".inter")]


def _header(path: str) -> list[str]:
    with open(path, "rb") as f:
        line = f.readline()
    text = line.decode("utf-8-sig", errors="replace").rstrip("\r\n")
    if not text.strip():
        raise MMRecError(f"{path}: empty file or empty header line (expected a header with {list(INTER_COLUMNS)})")
    # pyarrow unquotes header fields ("userID" -> userID); compare the same names
    return [c[1:-1] if len(c) >= 2 and c[0] == c[-1] == '"' else c for c in text.split("\t")]


def _locate_bad_line(path: str, cols: list[str]) -> str:
    """Error path only: the first line pyarrow could not convert, found with plain Python."""
    want = [cols.index(c) for c in INTER_COLUMNS]
    with open(path, encoding="utf-8", errors="replace") as f:
        next(f, None)
        for line_no, line in enumerate(f, start=2):
            line = line.rstrip("\r\n")
            if not line:
                continue
            fields = line.split("\t")
            if len(fields) != len(cols):
                return f"line {line_no} has {len(fields)} fields, the header {len(cols)}"
            for c, k in zip(INTER_COLUMNS, want):
                v = fields[k].strip()
                if v and not (v.lstrip("+-").isdigit()):
                    return f"line {line_no}: {c} {v!r} is not an integer"
    return ""


def read_inter(path: str, progress: Callable[[str], None] | None = None) -> MMRecInteractions:
    """Read and check a ``.inter`` file block by block (only userID, itemID, x_label)."""
    say = progress or (lambda _msg: None)
    cols = _header(path)
    missing = [c for c in INTER_COLUMNS if c not in cols]
    if missing:
        hint = " (is it TAB-separated?)" if len(cols) == 1 and ("," in cols[0] or " " in cols[0]) else ""
        raise MMRecError(f"{path}: missing column(s) {missing} in the header{hint}; found {cols}")
    t0 = time.perf_counter()
    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=_BLOCK_BYTES),
            parse_options=pacsv.ParseOptions(delimiter="\t"),
            convert_options=pacsv.ConvertOptions(
                include_columns=list(INTER_COLUMNS), column_types={c: pa.int64() for c in INTER_COLUMNS}
            ),
        )
    except (pa.ArrowException, OSError) as e:
        where = _locate_bad_line(path, cols)
        raise MMRecError(f"{path}: cannot parse as a TAB-separated .inter file ({where or e})") from e
    users, items, labels = [], [], []
    row = 0
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            break
        except (pa.ArrowException, OSError) as e:
            where = _locate_bad_line(path, cols)
            raise MMRecError(f"{path}: cannot parse as a TAB-separated .inter file ({where or e})") from e
        for c, out in zip(INTER_COLUMNS, (users, items, labels)):
            col = batch.column(c)
            if col.null_count:
                r = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
                raise MMRecError(f"{path}: empty {c} at data row {row + r + 1} (1-based, after the header)")
            arr = col.to_numpy()  # a view of the batch's buffer (int64, no nulls); copied below
            if c == "x_label":
                bad = np.flatnonzero((arr < 0) | (arr > 2))
                if bad.size:
                    r = int(bad[0])
                    raise MMRecError(
                        f"{path}: x_label {arr[r]} at data row {row + r + 1} is outside {{0, 1, 2}} "
                        "(0 train, 1 valid, 2 test)"
                    )
                arr = arr.astype(np.int8)
            else:
                neg = np.flatnonzero(arr < 0)
                if neg.size:
                    r = int(neg[0])
                    raise MMRecError(f"{path}: negative {c} {arr[r]} at data row {row + r + 1}")
                arr = arr.copy()  # numpy-owned: Arrow's block buffers go back to its pool now
            out.append(arr)
        row += batch.num_rows
        del batch
    del reader
    pa.default_memory_pool().release_unused()  # the reader's blocks, before the arrays double up
    if row == 0:
        raise MMRecError(f"{path}: no interaction rows after the header")
    u = np.concatenate(users)
    del users
    i = np.concatenate(items)
    del items
    splits = np.concatenate(labels)
    del labels
    counts = np.bincount(splits, minlength=3)
    for code, sname in enumerate(SPLIT_NAMES):
        if counts[code] == 0:
            raise MMRecError(f"{path}: no rows with x_label {code} ({sname} split is empty)")
    _check_duplicates(path, u, i)
    say(f"{os.path.basename(path)}: {row} rows ({counts[0]}/{counts[1]}/{counts[2]} train/valid/test) "
        f"in {time.perf_counter() - t0:.1f}s")
    return MMRecInteractions(path, u, i, splits)


def _check_duplicates(path: str, users: np.ndarray, items: np.ndarray) -> None:
    if users.size < 2:
        return
    span = int(items.max()) + 1
    if int(users.max()) < (np.iinfo(np.int64).max // span):
        keys = users * span + items
        sk = np.sort(keys)  # one sort; positions are only looked up on the (rare) error path
        dup = np.flatnonzero(sk[1:] == sk[:-1])
        if not dup.size:
            return
        rows = np.flatnonzero(keys == sk[dup[0]])[:2]
    else:  # ids too large for one int64 key
        order = np.lexsort((items, users))
        su, si = users[order], items[order]
        dup = np.flatnonzero((su[1:] == su[:-1]) & (si[1:] == si[:-1]))
        if not dup.size:
            return
        rows = np.sort(order[dup[0] : dup[0] + 2])
    r0, r1 = int(rows[0]), int(rows[1])
    raise MMRecError(
        f"{path}: duplicate interaction (userID {users[r0]}, itemID {items[r0]}) at data rows "
        f"{r0 + 1} and {r1 + 1} ({dup.size} duplicate rows in all)"
    )


def _count_distinct(ids: np.ndarray) -> int:
    hi = int(ids.max()) + 1
    if hi <= 4 * ids.size + (1 << 20):  # MMRec ids are contiguous: a bitmap, no sort
        seen = np.zeros(hi, dtype=bool)
        seen[ids] = True
        return int(np.count_nonzero(seen))
    return int(np.unique(ids).size)


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


def _writer_sink(fs, path: str, opened: list):
    if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        return path
    f = fs.open(path, "wb")
    opened.append(f)
    return f


def _write_parquet(fs, path: str, schema: pa.Schema, tables, **kwargs) -> None:
    opened: list = []
    try:
        with pq.ParquetWriter(_writer_sink(fs, path, opened), schema, **kwargs) as w:
            for t, rg in tables:
                w.write_table(t, row_group_size=rg)
    finally:
        for f in opened:
            f.close()


def _reset_folder(fs, folder: str) -> None:
    fs.makedirs(folder, exist_ok=True)
    old = sorted(fs.glob(posixpath.join(folder, "part-*.parquet")))
    if old:
        fs.rm(old)


def _part(k: int, n: int) -> str:
    return f"part-{k:0{max(5, len(str(max(n - 1, 0))))}d}.parquet"


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
        n_users=_count_distinct(inter.users),
        n_items=int(n_items),
        n_interactions=inter.n,
        modalities={m: int(feats[m].shape[1]) for m, _ in present},
        splits={s: int(split_counts[k]) for k, s in enumerate(SPLIT_NAMES)},
    )

    root = out or os.path.join(src, "sea_dist")
    fs, path = make_filesystem(root, s3_endpoint_url)
    fs.makedirs(path, exist_ok=True)
    meta_path = posixpath.join(path, "dataset.json")
    if fs.exists(meta_path):
        fs.rm(meta_path)  # never pair an old dataset.json with new shards

    ifolder = posixpath.join(path, "interactions")
    _reset_folder(fs, ifolder)
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
        _write_parquet(fs, posixpath.join(ifolder, _part(k, n_ishards)), ischema, [(t, None)])
    say(f"interactions: {E} rows in {n_ishards} shard(s)")

    np_dtype = np.float16 if feature_dtype == "float16" else np.float32
    pa_dtype = pa.float16() if feature_dtype == "float16" else pa.float32()
    n_fshards = max(1, -(-n_items // max(1, items_per_shard)))
    for m, _ in present:
        arr, dim = feats[m], int(feats[m].shape[1])
        folder = posixpath.join(path, "features", m)
        _reset_folder(fs, folder)
        schema = pa.schema([("item_id", pa.int64()), ("embedding", pa.list_(pa_dtype, dim))])
        for k in range(n_fshards):
            lo, hi = k * items_per_shard, min(n_items, (k + 1) * items_per_shard)

            def groups(lo: int = lo, hi: int = hi, arr: np.ndarray = arr, dim: int = dim, schema: pa.Schema = schema):
                for a in range(lo, hi, row_group_size):
                    b = min(hi, a + row_group_size)
                    vals = np.ascontiguousarray(arr[a:b], dtype=np_dtype).reshape(-1)
                    emb = pa.FixedSizeListArray.from_arrays(pa.array(vals, pa_dtype), dim)
                    yield pa.Table.from_arrays([pa.array(np.arange(a, b, dtype=np.int64)), emb], schema=schema), b - a

            _write_parquet(fs, posixpath.join(folder, _part(k, n_fshards)), schema, groups(), use_dictionary=False)
        say(f"features[{m}]: {n_items} x {dim} in {n_fshards} shard(s)")

    with fs.open(meta_path, "wb") as f:
        f.write((json.dumps(meta.to_dict(), indent=2) + "\n").encode("utf-8"))
    fs.invalidate_cache()
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
