"""The dataset contract: read, validate and write a dataset root (local path, ``file://``, ``s3://``).

Layout under a root URI (see ``docs/design.md``, "Data contract")::

    <root>/dataset.json                        # name, version, counts, modalities {name: dim}, splits
    <root>/interactions/part-*.parquet         # user_id, item_id (int64 or string), split int8 (0/1/2), [ts]
    <root>/features/<modality>/part-*.parquet  # item_id (int64 or string),
                                               # embedding fixed_size_list<float32|float16>[dim],
                                               # sorted by item_id, row groups sized for ranged reads

Why the checks are here and strict: a training job that runs for hours on a cluster must fail in
the first seconds, with a message a data engineer can act on, rather than train on silently
broken data (a NaN feature poisons every item it propagates to; a duplicate interaction double
counts; an item without features cannot be represented at all, since SEA has no item id
embeddings). So every :class:`DatasetError` names the file (and the row, item id or key) and the
problem. All checks are vectorised numpy so that a 50M-interaction dataset validates in seconds.

Ids: raw ids are arbitrary int64 or strings (:mod:`sea_dist.storage.ids`; one kind per column, users
and items may differ); the loader maps them to contiguous indices. Items are the ids
that have feature rows (the first modality defines the universe, every other modality must have
exactly the same ids) and are indexed in ascending raw-id order, which is also the on-disk order
of the feature shards, so item index ``i`` is row ``i`` of the concatenated shards. Users are the
distinct user ids of the interactions, in ascending order.

The storage underneath (filesystems, shards, column checks, the error type) is
:mod:`sea_dist.storage`; ``dataset.json`` is :mod:`sea_dist.data.meta`; writing a root is
:mod:`sea_dist.data.writer`.
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

import fsspec
import numpy as np

from sea_dist.arrays import sorted_unique
from sea_dist.data.meta import SPLIT_NAMES, DatasetMeta, read_meta
from sea_dist.storage.errors import DatasetError
from sea_dist.storage.fs import display, make_filesystem
from sea_dist.storage.ids import INT
from sea_dist.storage.schema import (
    FEATURE_COLUMNS,
    check_columns,
    check_feature_shard,
    check_id_column,
    check_int_column,
    id_numpy,
    int_numpy,
)
from sea_dist.storage.shards import SHARD_GLOB, Shard, list_shards, scan_shards

__all__ = ["Dataset", "load_dataset"]

_INTERACTION_COLUMNS = ("user_id", "item_id", "split")


@dataclass
class Dataset:
    """A loaded, validated dataset with contiguous ids (all arrays in memory)."""

    meta: DatasetMeta
    root: str
    user_raw_ids: np.ndarray  # int64 or str [n_users]; contiguous user index u -> raw user_id (ascending)
    item_raw_ids: np.ndarray  # int64 or str [n_items]; contiguous item index i -> raw item_id (ascending)
    users: np.ndarray  # int64 [E] contiguous user index of every interaction
    items: np.ndarray  # int64 [E] contiguous item index of every interaction
    splits: np.ndarray  # int8 [E], 0 train / 1 valid / 2 test
    features: dict[str, np.ndarray] = field(default_factory=dict)  # modality -> float32 [n_items, dim]

    @property
    def n_users(self) -> int:
        return int(self.user_raw_ids.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.item_raw_ids.shape[0])

    def split_edges(self, split: int) -> tuple[np.ndarray, np.ndarray]:
        """(users, items) contiguous indices of the interactions in ``split`` (0/1/2)."""
        if split not in (0, 1, 2):
            raise ValueError(f"split must be 0 (train), 1 (valid) or 2 (test), got {split!r}")
        mask = self.splits == split
        return self.users[mask], self.items[mask]


class _IdIndex:
    """Maps raw ids to their position in an ascending unique id array; -1 where absent.

    Why not plain ``np.searchsorted``: 50M random binary searches into a 2M-entry table take
    ~17 s (a cache miss per step). When the raw ids are dense enough, a lookup table (one int32
    per id in the id range, at most 1 GiB) does it in ~2.5 s; otherwise large queries are sorted
    first, so the binary searches walk the table in order (~8 s). Built once, queried per shard.
    """

    def __init__(self, sorted_ids: np.ndarray):
        self.ids = sorted_ids
        self.lut: np.ndarray | None = None
        if sorted_ids.size and sorted_ids.dtype.kind in "iu":
            self.lo, hi = int(sorted_ids[0]), int(sorted_ids[-1])
            self.span = hi - self.lo + 1
            if self.span <= max(16 * sorted_ids.size, 1 << 22) and self.span <= (1 << 28):
                lut = np.full(self.span + 1, -1, dtype=np.int32)  # last slot: "out of range"
                lut[sorted_ids - self.lo] = np.arange(sorted_ids.size, dtype=np.int32)
                self.lut = lut

    def __call__(self, query: np.ndarray) -> np.ndarray:
        ids = self.ids
        if ids.size == 0 or query.size == 0:
            return np.full(query.size, -1, dtype=np.int64)
        if self.lut is not None:
            inside = (query >= self.lo) & (query < self.lo + self.span)
            return self.lut[np.where(inside, query - self.lo, self.span)].astype(np.int64)
        if query.size > (1 << 20):
            order = np.argsort(query, kind="stable")
            idx = np.empty(query.size, dtype=np.int64)
            idx[order] = np.searchsorted(ids, query[order])
        else:
            idx = np.searchsorted(ids, query).astype(np.int64)
        idx[ids[np.minimum(idx, ids.size - 1)] != query] = -1
        return idx



def _read_features(
    fs: fsspec.AbstractFileSystem, path: str, modality: str, dim: int, id_kinds: dict[str, str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(item ids ascending, float32 [n, dim]) of one modality, checked for dim, order, finiteness."""
    folder = posixpath.join(path, "features", modality)
    if not fs.exists(folder):
        raise DatasetError(f"{display(fs, folder)}: feature folder of modality {modality!r} is missing")
    files = list_shards(fs, folder)
    if not files:
        raise DatasetError(
            f"{display(fs, folder)}: no feature shards ({SHARD_GLOB}) for modality {modality!r}"
        )

    def check(sh: Shard) -> None:
        check_feature_shard(sh, dim, modality, kinds)

    kinds: dict[str, str] = {} if id_kinds is None else id_kinds
    counts = scan_shards(fs, files, check)
    n = int(sum(counts))
    id_parts: list[np.ndarray] = []
    feats = np.empty((n, dim), dtype=np.float32)
    pos = 0
    for f in files:
        with Shard(fs, f) as sh:
            file_start = pos
            for table in sh.iter_row_groups(FEATURE_COLUMNS):
                k = table.num_rows
                if pos + k > n:
                    raise DatasetError(f"{sh.name}: more rows than its footer declares")
                group_ids = id_numpy(sh, table, "item_id")
                id_parts.append(group_ids)
                emb = table.column("embedding")
                if emb.null_count:
                    row = int(np.flatnonzero(emb.is_null().to_numpy(zero_copy_only=False))[0])
                    raise DatasetError(
                        f"{sh.name}: null embedding for item id {group_ids[row]} (modality {modality!r})"
                    )
                p = pos
                for chunk in emb.chunks:
                    m = len(chunk)
                    # .flatten() honours slice offsets (.values does not); nulls inside a
                    # vector come out as NaN here and are caught by the finiteness check.
                    feats[p : p + m] = chunk.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
                    p += m
                block = feats[pos : pos + k]
                # Row sums propagate NaN/inf; exact check only on the (rare) flagged rows.
                suspicious = np.flatnonzero(~np.isfinite(block.sum(axis=1, dtype=np.float64)))
                if suspicious.size:
                    bad = suspicious[~np.isfinite(block[suspicious]).all(axis=1)]
                    if bad.size:
                        r = int(bad[0])
                        raise DatasetError(
                            f"{sh.name}: NaN or inf in feature row of item id {group_ids[r]} "
                            f"(modality {modality!r}, row {pos + r - file_start})"
                        )
                pos += k
    if pos != n:
        raise DatasetError(f"{display(fs, folder)}: read {pos} rows, footers declare {n}")
    ids = np.concatenate(id_parts) if id_parts else np.zeros(0, dtype=np.int64)

    if n > 1:
        # comparisons, not np.diff: they work for string ids too
        same = ids[1:] == ids[:-1]
        bad = np.flatnonzero(same | (ids[1:] < ids[:-1]))
        if bad.size:
            r = int(bad[0]) + 1
            f_idx = int(np.searchsorted(np.cumsum(counts), r, side="right"))
            fname = display(fs, files[f_idx])
            row = r - (int(np.sum(counts[:f_idx])))
            if same[r - 1]:
                raise DatasetError(
                    f"{fname}: duplicate feature row for item id {ids[r]} (row {row}, modality {modality!r})"
                )
            raise DatasetError(
                f"{fname}: feature rows not sorted by item_id: item id {ids[r]} at row {row} "
                f"follows item id {ids[r - 1]} (modality {modality!r}; shards must be sorted and "
                "concatenate in name order)"
            )
    return ids, feats



def load_dataset(root: str, s3_endpoint_url: str = "") -> Dataset:
    """Load and validate a dataset root; raise :class:`DatasetError` on any contract breach."""
    fs, path = make_filesystem(root, s3_endpoint_url)
    meta = read_meta(fs, path, root)
    meta_where = display(fs, posixpath.join(path, "dataset.json"))

    # --- features: they define the item universe --------------------------------------------
    features: dict[str, np.ndarray] = {}
    item_raw_ids: np.ndarray | None = None
    first = ""
    item_kinds: dict[str, str] = {}  # one id kind across every modality's shards
    for modality, dim in meta.modalities.items():
        ids, feats = _read_features(fs, path, modality, dim, item_kinds)
        if item_raw_ids is None:
            item_raw_ids, first = ids, modality
        elif not np.array_equal(ids, item_raw_ids):
            folder = display(fs, posixpath.join(path, "features", modality))
            missing = np.setdiff1d(item_raw_ids, ids)
            extra = np.setdiff1d(ids, item_raw_ids)
            detail = []
            if missing.size:
                detail.append(f"{missing.size} item id(s) of {first!r} missing, e.g. {missing[:3].tolist()}")
            if extra.size:
                detail.append(f"{extra.size} item id(s) not in {first!r}, e.g. {extra[:3].tolist()}")
            raise DatasetError(
                f"{folder}: modality {modality!r} has a different item id set than {first!r} "
                f"({'; '.join(detail)})"
            )
        features[modality] = feats
    assert item_raw_ids is not None  # modalities is non-empty (checked in DatasetMeta)

    # --- interactions ---------------------------------------------------------------------------
    ifolder = posixpath.join(path, "interactions")
    files = list_shards(fs, ifolder)
    if not files:
        raise DatasetError(f"{display(fs, ifolder)}: no interaction shards ({SHARD_GLOB})")

    user_kinds: dict[str, str] = {}
    interaction_item_kinds = dict(item_kinds, where=f"features/{first}/")

    def check(sh: Shard) -> None:
        schema = check_columns(sh, _INTERACTION_COLUMNS)
        check_id_column(sh, schema, "user_id", user_kinds)
        check_id_column(sh, schema, "item_id", interaction_item_kinds)
        check_int_column(sh, schema, "split", "int8")

    counts = np.array(scan_shards(fs, files, check), dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    n_edges = int(offsets[-1])
    string_users = user_kinds.get("kind") not in (None, INT)
    # int ids fill one preallocated array; string ids never exist as one edge-sized array
    # (50M x 36-character ids would be 7 GB): each shard keeps its distinct ids and an int64
    # index into them, mapped to the global order once every shard has been read
    users_raw = np.empty(0 if string_users else n_edges, dtype=np.int64)
    shard_user_ids: list[tuple[int, np.ndarray, np.ndarray]] = []  # (row offset, distinct ids, index)
    items = np.empty(n_edges, dtype=np.int64)
    splits = np.empty(n_edges, dtype=np.int8)
    item_index = _IdIndex(item_raw_ids)
    for k, f in enumerate(files):
        with Shard(fs, f) as sh:
            table = sh.read(_INTERACTION_COLUMNS)
            lo, hi = int(offsets[k]), int(offsets[k]) + table.num_rows
            if table.num_rows != counts[k]:
                raise DatasetError(f"{sh.name}: read {table.num_rows} rows, footer declares {counts[k]}")
            shard_users = id_numpy(sh, table, "user_id")
            if string_users:
                distinct, index = np.unique(shard_users, return_inverse=True)
                shard_user_ids.append((lo, distinct, index.reshape(-1).astype(np.int64)))
                del shard_users
            else:
                users_raw[lo:hi] = shard_users
            s = int_numpy(sh, table, "split")
            bad = np.flatnonzero((s < 0) | (s > 2))
            if bad.size:
                r = int(bad[0])
                raise DatasetError(
                    f"{sh.name}: split value {s[r]} at row {r} is outside {{0, 1, 2}} "
                    f"({bad.size} such rows)"
                )
            splits[lo:hi] = s
            it_raw = id_numpy(sh, table, "item_id")
            idx = item_index(it_raw)
            unknown = np.flatnonzero(idx < 0)
            if unknown.size:
                r = int(unknown[0])
                raise DatasetError(
                    f"{sh.name}: interaction at row {r} has item id {it_raw[r]} with no feature rows "
                    f"({unknown.size} such rows in this shard; items are the ids in features/{first}/)"
                )
            items[lo:hi] = idx
            del table

    def _where(global_row: int) -> str:
        k = int(np.searchsorted(offsets, global_row, side="right")) - 1
        return f"{display(fs, files[k])} row {global_row - int(offsets[k])}"

    if string_users:
        user_raw_ids = sorted_unique(np.concatenate([d for _, d, _ in shard_user_ids]))
        users = np.empty(n_edges, dtype=np.int64)
        for lo, distinct, index in shard_user_ids:
            users[lo : lo + index.size] = np.searchsorted(user_raw_ids, distinct)[index]
        del shard_user_ids
    else:
        user_raw_ids = sorted_unique(users_raw)
        users = _IdIndex(user_raw_ids)(users_raw)
    del users_raw

    # duplicates: one int64 key per (user, item) pair, sorted once
    if n_edges > 1:
        keys = users * np.int64(max(item_raw_ids.size, 1)) + items
        sk = np.sort(keys)
        dup = np.flatnonzero(sk[1:] == sk[:-1])
        if dup.size:
            key = sk[int(dup[0])]
            rows = np.flatnonzero(keys == key)[:2]
            r0 = int(rows[0])
            raise DatasetError(
                f"{display(fs, ifolder)}: duplicate interaction (user_id {user_raw_ids[users[r0]]}, "
                f"item_id {item_raw_ids[items[r0]]}) at {_where(int(rows[0]))} and {_where(int(rows[1]))} "
                f"({dup.size} duplicate rows in all)"
            )
        del keys, sk

    split_counts = np.bincount(splits.astype(np.int64), minlength=3)
    for code, name in enumerate(SPLIT_NAMES):
        if split_counts[code] == 0:
            raise DatasetError(f"{display(fs, ifolder)}: split {name!r} (split == {code}) has no interactions")

    # --- counts claimed by dataset.json --------------------------------------------------------
    actual = {
        "n_users": int(user_raw_ids.size),
        "n_items": int(item_raw_ids.size),
        "n_interactions": n_edges,
    }
    for key, value in actual.items():
        claimed = getattr(meta, key)
        if claimed != value:
            raise DatasetError(f"{meta_where}: {key} is {claimed} but the data has {value}")
    for code, name in enumerate(SPLIT_NAMES):
        if meta.splits[name] != int(split_counts[code]):
            raise DatasetError(
                f"{meta_where}: splits.{name} is {meta.splits[name]} but the data has {int(split_counts[code])}"
            )

    return Dataset(
        meta=meta,
        root=root,
        user_raw_ids=user_raw_ids,
        item_raw_ids=item_raw_ids,
        users=users,
        items=items,
        splits=splits,
        features=features,
    )
