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

Ids: raw ids are arbitrary int64 or strings (:mod:`sea_dist.data.ids`; one kind per column, users
and items may differ); the loader maps them to contiguous indices. Items are the ids
that have feature rows (the first modality defines the universe, every other modality must have
exactly the same ids) and are indexed in ascending raw-id order, which is also the on-disk order
of the feature shards, so item index ``i`` is row ``i`` of the concatenated shards. Users are the
distinct user ids of the interactions, in ascending order.
"""
from __future__ import annotations

import json
import os
import posixpath
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sea_dist.arrays import sorted_unique
from sea_dist.data.ids import INT, arrow_id_kind, as_raw_ids, ids_to_arrow, ids_to_numpy
from sea_dist.ops.retry import s3_config_kwargs, storage_fault, with_retries

__all__ = [
    "DatasetError",
    "DatasetMeta",
    "Dataset",
    "SPLIT_NAMES",
    "make_filesystem",
    "load_meta",
    "load_dataset",
    "write_dataset",
]

#: split code -> name, as stored in ``interactions.split`` and ``dataset.json["splits"]``.
SPLIT_NAMES: tuple[str, str, str] = ("train", "valid", "test")

_META_KEYS = ("name", "version", "n_users", "n_items", "n_interactions", "modalities", "splits")
_INTERACTION_COLUMNS = ("user_id", "item_id", "split")
_SHARD_GLOB = "part-*.parquet"


class DatasetError(ValueError):
    """A dataset root breaks the data contract; the message names the file and the problem."""


@dataclass(frozen=True)
class DatasetMeta:
    """The content of ``dataset.json``: what the data claims to be, checked against the data."""

    name: str
    version: str
    n_users: int
    n_items: int
    n_interactions: int
    modalities: dict[str, int]  # modality -> feature dim, ordered as in dataset.json
    splits: dict[str, int]  # "train"/"valid"/"test" -> number of interactions

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict in the key order of the contract."""
        return {
            "name": self.name,
            "version": self.version,
            "n_users": int(self.n_users),
            "n_items": int(self.n_items),
            "n_interactions": int(self.n_interactions),
            "modalities": {k: int(v) for k, v in self.modalities.items()},
            "splits": {k: int(self.splits[k]) for k in SPLIT_NAMES if k in self.splits},
        }

    @classmethod
    def from_dict(cls, obj: Any, where: str = "dataset.json") -> "DatasetMeta":
        """Parse and check a decoded ``dataset.json``; ``where`` names the file in errors."""
        if not isinstance(obj, dict):
            raise DatasetError(f"{where}: malformed, expected a JSON object, got {type(obj).__name__}")
        missing = [k for k in _META_KEYS if k not in obj]
        if missing:
            raise DatasetError(f"{where}: malformed, missing key(s) {missing}")

        def _count(key: str, value: Any) -> int:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise DatasetError(f"{where}: key {key!r} must be a non-negative integer, got {value!r}")
            return int(value)

        if not isinstance(obj["name"], str):
            raise DatasetError(f"{where}: key 'name' must be a string, got {obj['name']!r}")
        if not isinstance(obj["version"], (str, int)) or isinstance(obj["version"], bool):
            raise DatasetError(f"{where}: key 'version' must be a string, got {obj['version']!r}")
        mods = obj["modalities"]
        if not isinstance(mods, dict) or not mods:
            raise DatasetError(f"{where}: key 'modalities' must be a non-empty object {{name: dim}}, got {mods!r}")
        modalities: dict[str, int] = {}
        for m, dim in mods.items():
            if not m or "/" in m:
                raise DatasetError(f"{where}: modality name {m!r} is not a valid folder name")
            d = _count(f"modalities.{m}", dim)
            if d == 0:
                raise DatasetError(f"{where}: modality {m!r} has dim 0")
            if d % 2:
                # SEA splits each modality's transformed features into a generic and a unique
                # half (docs/model.md, "Forward pass", step 1), so the dim must be even.
                raise DatasetError(
                    f"{where}: modality {m!r} has odd feature dim {d}; SEA splits each modality "
                    "into generic/unique halves, so dims must be even"
                )
            modalities[m] = d
        sp = obj["splits"]
        if not isinstance(sp, dict):
            raise DatasetError(f"{where}: key 'splits' must be an object {{train, valid, test}}, got {sp!r}")
        missing_sp = [k for k in SPLIT_NAMES if k not in sp]
        if missing_sp:
            raise DatasetError(f"{where}: malformed, key 'splits' is missing {missing_sp}")
        extra_sp = [k for k in sp if k not in SPLIT_NAMES]
        if extra_sp:
            raise DatasetError(f"{where}: unknown split name(s) {extra_sp} in 'splits' (expected {list(SPLIT_NAMES)})")
        return cls(
            name=obj["name"],
            version=str(obj["version"]),
            n_users=_count("n_users", obj["n_users"]),
            n_items=_count("n_items", obj["n_items"]),
            n_interactions=_count("n_interactions", obj["n_interactions"]),
            modalities=modalities,
            splits={k: _count(f"splits.{k}", sp[k]) for k in SPLIT_NAMES},
        )


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


# --------------------------------------------------------------------------------------------
# filesystem


def make_filesystem(root: str, s3_endpoint_url: str = "") -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path without scheme) for a local path, ``file://`` or ``s3://`` URI.

    The S3 endpoint override goes through ``client_kwargs["endpoint_url"]`` (S3-compatible
    stores: MinIO, SeaweedFS, moto). The region is deliberately *not* put into ``client_kwargs``:
    it comes from ``AWS_DEFAULT_REGION`` (passing ``region_name`` makes bucket creation fail
    on moto/us-east-1 with InvalidLocationConstraint). Directory listings are not cached, so a
    long-lived process sees shards that another process wrote after it first looked. The
    client retries transient faults per request with the botocore retry mode, attempts and
    timeouts in force (:func:`sea_dist.ops.retry.s3_config_kwargs`, from the ``data`` config).
    """
    protocol, path = fsspec.core.split_protocol(root)
    if protocol in (None, "file", "local"):
        fs = fsspec.filesystem("file")
        return fs, os.path.abspath(os.path.expanduser(path))
    if protocol in ("s3", "s3a"):
        kwargs: dict[str, Any] = {"use_listings_cache": False, "config_kwargs": s3_config_kwargs()}
        if s3_endpoint_url:
            kwargs["client_kwargs"] = {"endpoint_url": s3_endpoint_url}
        fs = fsspec.filesystem("s3", **kwargs)
        return fs, fs._strip_protocol(root).rstrip("/")
    fs = fsspec.filesystem(protocol)  # e.g. memory:// in experiments; no guarantees beyond fsspec's
    return fs, fs._strip_protocol(root).rstrip("/")


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def _display(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A path as the user would write it (with its scheme), for error messages."""
    return path if _is_local(fs) else fs.unstrip_protocol(path)


def _list_shards(fs: fsspec.AbstractFileSystem, folder: str) -> list[str]:
    """``part-*.parquet`` files of a folder, in name order (the order rows are concatenated in)."""
    return with_retries(
        lambda: sorted(fs.glob(posixpath.join(folder, _SHARD_GLOB))), f"listing {_display(fs, folder)}"
    )


@contextmanager
def _decoding(name: str, where: str = "") -> Iterator[None]:
    """Errors of pyarrow reading a shard: a storage fault (a dropped connection, a timeout, a
    missing key, a denied request) goes up as itself, to be retried or reported as what it is;
    only what is left (the bytes arrived and do not decode) calls the shard corrupted."""
    try:
        yield
    except (pa.ArrowException, OSError, ValueError) as e:
        if isinstance(e, DatasetError) or storage_fault(e) is not None:
            raise
        raise DatasetError(f"{name}: corrupted or unreadable Parquet shard ({where}{e})") from e


class _Shard:
    """An open Parquet shard. Decoding errors become DatasetErrors naming the file; transient
    storage faults are retried (the file reopened first), other storage faults raised as such."""

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str):
        self.fs, self.path, self.name = fs, path, _display(fs, path)
        self._fh = None
        self._pf: pq.ParquetFile | None = None
        with_retries(self._open, f"opening {self.name}", on_retry=self._drop)

    def _open(self) -> pq.ParquetFile:
        if self._pf is None:
            try:
                with _decoding(self.name):
                    if _is_local(self.fs):
                        self._pf = pq.ParquetFile(self.path)
                    else:
                        self._fh = self.fs.open(self.path, "rb")
                        self._pf = pq.ParquetFile(self._fh)
            except BaseException:
                self.close()
                raise
        return self._pf

    def _drop(self, _error: BaseException | None = None) -> None:
        """Forget the open file (its connection may be broken); the next read reopens it."""
        try:
            self.close()
        except Exception:  # noqa: BLE001 - closing a broken handle may fail; it is dropped anyway
            self._pf = self._fh = None

    @property
    def pf(self) -> pq.ParquetFile:
        return self._open()

    @property
    def num_rows(self) -> int:
        return int(self.pf.metadata.num_rows)

    def read(self, columns: Sequence[str]) -> pa.Table:
        def read() -> pa.Table:
            with _decoding(self.name):
                return self._open().read(columns=list(columns))

        return with_retries(read, f"reading {self.name}", on_retry=self._drop)

    def read_row_group(self, rg: int, columns: Sequence[str]) -> pa.Table:
        def read() -> pa.Table:
            with _decoding(self.name, f"row group {rg}: "):
                return self._open().read_row_group(rg, columns=list(columns))

        return with_retries(read, f"reading {self.name} row group {rg}", on_retry=self._drop)

    def iter_row_groups(self, columns: Sequence[str]) -> Iterator[pa.Table]:
        """One row group at a time, so reading a large feature shard needs no second full copy."""
        for rg in range(self.pf.num_row_groups):
            yield self.read_row_group(rg, columns)

    def close(self) -> None:
        pf, fh = self._pf, self._fh
        self._pf = self._fh = None
        if pf is not None:
            pf.close()
        if fh is not None:
            fh.close()

    def __enter__(self) -> "_Shard":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _scan_shards(
    fs: fsspec.AbstractFileSystem, files: Sequence[str], check: Callable[["_Shard"], None]
) -> list[int]:
    """Check every shard's schema and return its row count, from the footers only.

    A first pass over footers (cheap) lets the reader fail on a bad schema before reading any
    data and preallocate exact output arrays; shards are opened one at a time, so thousands of
    shards never hold thousands of file handles.
    """
    counts = []
    for f in files:
        with _Shard(fs, f) as sh:
            check(sh)
            counts.append(sh.num_rows)
    return counts


def _check_columns(shard: _Shard, expected: Sequence[str]) -> pa.Schema:
    schema = shard.pf.schema_arrow
    missing = [c for c in expected if c not in schema.names]
    if missing:
        raise DatasetError(
            f"{shard.name}: missing column(s) {missing} (found {schema.names}; expected {list(expected)})"
        )
    return schema


def _check_int_column(shard: _Shard, schema: pa.Schema, column: str, want: str) -> None:
    t = schema.field(column).type
    if not pa.types.is_integer(t):
        raise DatasetError(f"{shard.name}: column {column!r} has type {t}, expected {want}")


def _check_id_column(shard: _Shard, schema: pa.Schema, column: str, kinds: dict[str, str]) -> None:
    """An id column must hold integers or strings, of the same kind in every shard that shares
    ``kinds`` (one dict per id column of the dataset)."""
    t = schema.field(column).type
    kind = arrow_id_kind(t)
    if kind is None:
        raise DatasetError(f"{shard.name}: column {column!r} has type {t}, expected int64 or string ids")
    seen = kinds.setdefault("kind", kind)
    if kind != seen:
        raise DatasetError(
            f"{shard.name}: column {column!r} holds {kind} ids where {kinds.get('where', 'earlier shards')} "
            f"hold {seen} ids (one id kind per column)"
        )
    kinds.setdefault("where", shard.name)


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


def _non_null_column(shard: _Shard, table: pa.Table, column: str) -> pa.ChunkedArray:
    col = table.column(column)
    if col.null_count:
        row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise DatasetError(f"{shard.name}: column {column!r} has a null at row {row}")
    return col


def _id_numpy(shard: _Shard, table: pa.Table, column: str) -> np.ndarray:
    """An id column as int64 or unicode numpy (:func:`sea_dist.data.ids.ids_to_numpy`); no nulls."""
    col = _non_null_column(shard, table, column)
    try:
        return ids_to_numpy(col)
    except pa.ArrowInvalid as e:
        raise DatasetError(f"{shard.name}: column {column!r} does not fit int64 ({e})") from e
    except ValueError as e:
        raise DatasetError(f"{shard.name}: column {column!r}: {e}") from e


def _int_numpy(shard: _Shard, table: pa.Table, column: str) -> np.ndarray:
    """An integer column as int64 numpy (narrower ints are accepted and widened; nulls are not)."""
    col = _non_null_column(shard, table, column)
    if col.type != pa.int64():
        try:
            col = pc.cast(col, pa.int64())  # safe cast: uint64 > 2**63 fails loudly
        except pa.ArrowInvalid as e:
            raise DatasetError(f"{shard.name}: column {column!r} does not fit int64 ({e})") from e
    return col.to_numpy()


# --------------------------------------------------------------------------------------------
# reading


def load_meta(root: str, s3_endpoint_url: str = "") -> DatasetMeta:
    """Read and check only ``dataset.json`` (cheap: for jobs that need counts, not data)."""
    fs, path = make_filesystem(root, s3_endpoint_url)
    return _load_meta(fs, path, root)


def _load_meta(fs: fsspec.AbstractFileSystem, path: str, root: str) -> DatasetMeta:
    meta_path = posixpath.join(path, "dataset.json")
    where = _display(fs, meta_path)

    def read() -> bytes:
        # the key first: s3fs answers "no" for a bucket it cannot reach, whatever the reason,
        # but raises the real error (denied, connection refused) for a key
        if not fs.exists(meta_path):
            if not fs.exists(path):
                raise DatasetError(f"{root}: dataset root does not exist")
            raise DatasetError(f"{where}: dataset.json is missing (not a dataset root?)")
        with fs.open(meta_path, "rb") as f:
            return f.read()

    raw = with_retries(read, f"reading {where}")
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{where}: malformed JSON ({e})") from e
    return DatasetMeta.from_dict(obj, where)


def _read_features(
    fs: fsspec.AbstractFileSystem, path: str, modality: str, dim: int, id_kinds: dict[str, str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(item ids ascending, float32 [n, dim]) of one modality, checked for dim, order, finiteness."""
    folder = posixpath.join(path, "features", modality)
    if not fs.exists(folder):
        raise DatasetError(f"{_display(fs, folder)}: feature folder of modality {modality!r} is missing")
    files = _list_shards(fs, folder)
    if not files:
        raise DatasetError(
            f"{_display(fs, folder)}: no feature shards ({_SHARD_GLOB}) for modality {modality!r}"
        )

    def check(sh: _Shard) -> None:
        schema = _check_columns(sh, ("item_id", "embedding"))
        _check_id_column(sh, schema, "item_id", kinds)
        t = schema.field("embedding").type
        if not pa.types.is_fixed_size_list(t) or t.value_type not in (pa.float32(), pa.float16()):
            raise DatasetError(
                f"{sh.name}: column 'embedding' has type {t}, expected "
                f"fixed_size_list<float32|float16>[{dim}]"
            )
        if t.list_size != dim:
            raise DatasetError(
                f"{sh.name}: embedding dim {t.list_size} disagrees with dataset.json "
                f"(modality {modality!r} has dim {dim})"
            )

    kinds: dict[str, str] = {} if id_kinds is None else id_kinds
    counts = _scan_shards(fs, files, check)
    n = int(sum(counts))
    id_parts: list[np.ndarray] = []
    feats = np.empty((n, dim), dtype=np.float32)
    pos = 0
    for f in files:
        with _Shard(fs, f) as sh:
            file_start = pos
            for table in sh.iter_row_groups(("item_id", "embedding")):
                k = table.num_rows
                if pos + k > n:
                    raise DatasetError(f"{sh.name}: more rows than its footer declares")
                group_ids = _id_numpy(sh, table, "item_id")
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
        raise DatasetError(f"{_display(fs, folder)}: read {pos} rows, footers declare {n}")
    ids = np.concatenate(id_parts) if id_parts else np.zeros(0, dtype=np.int64)

    if n > 1:
        # comparisons, not np.diff: they work for string ids too
        same = ids[1:] == ids[:-1]
        bad = np.flatnonzero(same | (ids[1:] < ids[:-1]))
        if bad.size:
            r = int(bad[0]) + 1
            f_idx = int(np.searchsorted(np.cumsum(counts), r, side="right"))
            fname = _display(fs, files[f_idx])
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
    meta = _load_meta(fs, path, root)
    meta_where = _display(fs, posixpath.join(path, "dataset.json"))

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
            folder = _display(fs, posixpath.join(path, "features", modality))
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
    files = _list_shards(fs, ifolder)
    if not files:
        raise DatasetError(f"{_display(fs, ifolder)}: no interaction shards ({_SHARD_GLOB})")

    user_kinds: dict[str, str] = {}
    interaction_item_kinds = dict(item_kinds, where=f"features/{first}/")

    def check(sh: _Shard) -> None:
        schema = _check_columns(sh, _INTERACTION_COLUMNS)
        _check_id_column(sh, schema, "user_id", user_kinds)
        _check_id_column(sh, schema, "item_id", interaction_item_kinds)
        _check_int_column(sh, schema, "split", "int8")

    counts = np.array(_scan_shards(fs, files, check), dtype=np.int64)
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
        with _Shard(fs, f) as sh:
            table = sh.read(_INTERACTION_COLUMNS)
            lo, hi = int(offsets[k]), int(offsets[k]) + table.num_rows
            if table.num_rows != counts[k]:
                raise DatasetError(f"{sh.name}: read {table.num_rows} rows, footer declares {counts[k]}")
            shard_users = _id_numpy(sh, table, "user_id")
            if string_users:
                distinct, index = np.unique(shard_users, return_inverse=True)
                shard_user_ids.append((lo, distinct, index.reshape(-1).astype(np.int64)))
                del shard_users
            else:
                users_raw[lo:hi] = shard_users
            s = _int_numpy(sh, table, "split")
            bad = np.flatnonzero((s < 0) | (s > 2))
            if bad.size:
                r = int(bad[0])
                raise DatasetError(
                    f"{sh.name}: split value {s[r]} at row {r} is outside {{0, 1, 2}} "
                    f"({bad.size} such rows)"
                )
            splits[lo:hi] = s
            it_raw = _id_numpy(sh, table, "item_id")
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
        return f"{_display(fs, files[k])} row {global_row - int(offsets[k])}"

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
                f"{_display(fs, ifolder)}: duplicate interaction (user_id {user_raw_ids[users[r0]]}, "
                f"item_id {item_raw_ids[items[r0]]}) at {_where(int(rows[0]))} and {_where(int(rows[1]))} "
                f"({dup.size} duplicate rows in all)"
            )
        del keys, sk

    split_counts = np.bincount(splits.astype(np.int64), minlength=3)
    for code, name in enumerate(SPLIT_NAMES):
        if split_counts[code] == 0:
            raise DatasetError(f"{_display(fs, ifolder)}: split {name!r} (split == {code}) has no interactions")

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


# --------------------------------------------------------------------------------------------
# writing


def _write_table(fs: fsspec.AbstractFileSystem, path: str, table: pa.Table, **kwargs: Any) -> None:
    if _is_local(fs):
        pq.write_table(table, path, **kwargs)
    else:
        with fs.open(path, "wb") as f:
            pq.write_table(table, f, **kwargs)


def _clear_shards(fs: fsspec.AbstractFileSystem, folder: str) -> None:
    """Remove old shards, so a rewrite with fewer shards leaves no stale ``part-*`` behind."""
    old = _list_shards(fs, folder) if fs.exists(folder) else []
    if old:
        fs.rm(old)


def write_dataset(
    root: str,
    meta: DatasetMeta,
    users_raw: np.ndarray,
    items_raw: np.ndarray,
    splits: np.ndarray,
    features: dict[str, np.ndarray],
    item_raw_ids: np.ndarray,
    *,
    interactions_per_shard: int = 1_000_000,
    items_per_shard: int = 100_000,
    row_group_size: int = 8192,
    feature_dtype: str = "float32",
    s3_endpoint_url: str = "",
) -> None:
    """Write a dataset root in the contract's layout; ``dataset.json`` goes last.

    ``features[m]`` is float32 ``[n_items, dim]`` with row ``j`` belonging to ``item_raw_ids[j]``
    (any order: rows are sorted by item id on the way out, as the contract requires).
    Interactions are written in the given order. Only shapes are checked here; semantic checks
    (counts, duplicates, unknown ids, ...) are :func:`load_dataset`'s job, so tests and tools can
    still write deliberately broken data. Feature shards use ``fixed_size_list`` without
    dictionary encoding (self-describing, ~2x faster to read than with dictionaries) and row
    groups of ``row_group_size`` rows, the unit of ranged reads by the feature fetcher.
    """
    if feature_dtype not in ("float32", "float16"):
        raise ValueError(f"feature_dtype must be 'float32' or 'float16', got {feature_dtype!r}")
    users_raw = as_raw_ids(users_raw)
    items_raw = as_raw_ids(items_raw)
    splits = np.asarray(splits, dtype=np.int8)
    item_raw_ids = as_raw_ids(item_raw_ids)
    if not (users_raw.shape == items_raw.shape == splits.shape) or users_raw.ndim != 1:
        raise ValueError(
            f"users_raw, items_raw, splits must be 1-d of equal length, got shapes "
            f"{users_raw.shape}, {items_raw.shape}, {splits.shape}"
        )
    if list(features) != list(meta.modalities):
        raise ValueError(f"features modalities {list(features)} != meta.modalities {list(meta.modalities)}")
    for m, arr in features.items():
        if arr.ndim != 2 or arr.shape != (item_raw_ids.size, meta.modalities[m]):
            raise ValueError(
                f"features[{m!r}] has shape {arr.shape}, expected ({item_raw_ids.size}, {meta.modalities[m]})"
            )

    fs, path = make_filesystem(root, s3_endpoint_url)
    fs.makedirs(path, exist_ok=True)

    ifolder = posixpath.join(path, "interactions")
    fs.makedirs(ifolder, exist_ok=True)
    _clear_shards(fs, ifolder)
    n_edges = users_raw.size
    n_ishards = max(1, -(-n_edges // max(1, interactions_per_shard)))
    for k in range(n_ishards):
        lo, hi = k * interactions_per_shard, min(n_edges, (k + 1) * interactions_per_shard)
        table = pa.table(
            {
                "user_id": ids_to_arrow(users_raw[lo:hi]),
                "item_id": ids_to_arrow(items_raw[lo:hi]),
                "split": pa.array(splits[lo:hi], pa.int8()),
            }
        )
        _write_table(fs, posixpath.join(ifolder, f"part-{k:05d}.parquet"), table)

    order = np.argsort(item_raw_ids, kind="stable")
    sorted_ids = item_raw_ids[order]
    np_dtype = np.float16 if feature_dtype == "float16" else np.float32
    pa_dtype = pa.float16() if feature_dtype == "float16" else pa.float32()
    n_items = sorted_ids.size
    n_fshards = max(1, -(-n_items // max(1, items_per_shard)))
    for m, arr in features.items():
        dim = meta.modalities[m]
        folder = posixpath.join(path, "features", m)
        fs.makedirs(folder, exist_ok=True)
        _clear_shards(fs, folder)
        for k in range(n_fshards):
            lo, hi = k * items_per_shard, min(n_items, (k + 1) * items_per_shard)
            vals = np.ascontiguousarray(arr[order[lo:hi]], dtype=np_dtype).reshape(-1)
            emb = pa.FixedSizeListArray.from_arrays(pa.array(vals, pa_dtype), dim)
            table = pa.table({"item_id": ids_to_arrow(sorted_ids[lo:hi]), "embedding": emb})
            _write_table(
                fs,
                posixpath.join(folder, f"part-{k:05d}.parquet"),
                table,
                row_group_size=row_group_size,
                use_dictionary=False,
            )

    with fs.open(posixpath.join(path, "dataset.json"), "wb") as f:
        f.write((json.dumps(meta.to_dict(), indent=2) + "\n").encode("utf-8"))
    fs.invalidate_cache()
