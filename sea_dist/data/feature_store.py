"""Random access to item feature rows at catalog size: read only the row groups a batch needs.

No worker may hold every item's raw features (5M items x 4096 float32 is 80 GB), so training
workers fetch the rows of the items in their minibatches from the Parquet shards of one
modality (``<root>/features/<modality>/part-*.parquet``, see ``docs/design.md``, "Data contract").

How a fetch works
-----------------
* **At open, footers only.** Each shard's footer gives, per row group, ``num_rows``, the
  ``item_id`` min/max from the row-group statistics and the compressed size of the
  ``item_id`` + ``embedding`` column chunks. Shards are sorted by ``item_id`` and concatenate
  in name order, so the row groups form one ascending sequence of disjoint id ranges; this is
  checked (an overlap is a contract breach and raises :class:`DatasetError` naming the shard).
  The footer objects are kept, so reading a row group later never re-reads a footer.
* **Lookup.** The requested ids are made unique and sorted; one ``searchsorted`` over the row
  groups' max ids assigns each id its only candidate row group. Ids that fall into a gap
  between ranges are missing without any read; all other row groups are skipped.
* **Read.** A candidate row group not in the cache is read with only the ``item_id`` and
  ``embedding`` columns (``ParquetFile.read_row_group``; on S3 a ranged GET per column chunk,
  coalesced by ``pre_buffer``, through an fsspec file with no read-ahead cache, so the bytes
  moved are the column chunks' compressed sizes that :class:`FetchStats` counts). The
  ``fixed_size_list`` column is decoded with ``chunk.flatten().to_numpy().reshape(-1, dim)``:
  a zero-copy view of Arrow's decoded buffer, in the stored dtype.
* **Gather.** Rows are located inside the row group by binary search over its (sorted) ids
  and written into one float32 output in the *requested* order; float16 is upcast there, in
  the same copy. Duplicates in the request are served from the same cached row.

Cache
-----
A bounded LRU of *decoded row groups* (ids + the zero-copy feature view, stored dtype), at
most ``cache_rows`` rows in all. Why row groups rather than single rows: a row group is the
unit Parquet reads anyway (there is no cheaper read of one row), so keeping all of it costs no
extra I/O, lookups stay vectorised (one binary search per row group, no per-row Python dict
of 100k-row batches), and neighbouring items (kNN neighbours are often near in id order for
sorted catalogs) hit for free. The bound is in rows, so memory is about
``cache_rows * dim * itemsize`` (1M rows x 384 float32 = 1.5 GB; lower it for 4096-d
features). A row group larger than ``cache_rows`` is served but not kept.

Storage faults
--------------
A row group read is many requests (pre-buffered ranged GETs issued by pyarrow through a file
object). botocore retries each request (``data.s3_max_attempts``); when a read still fails
with a transient fault (a connection dropped half way through a body, an endpoint gone for
longer than botocore's attempts), the shard's file is dropped and reopened and the row group
read again (:func:`sea_dist.storage.retry.with_retries`, ``data.storage_retries`` attempts),
counted in :attr:`FetchStats.retries`. Reads are idempotent, so a retried fetch returns the
same rows. Permanent faults (missing key, access denied) are raised as themselves; only bytes
that arrived and do not decode are reported as a corrupted shard (:class:`DatasetError`).

Not thread-safe by design of the stats; a lock makes concurrent ``fetch`` calls serialise
instead of corrupting state. A store pickles without its cache and open files (DataLoader
workers, Ray tasks), which reopen lazily.
"""
from __future__ import annotations

import logging
import posixpath
import threading
import time
from collections import OrderedDict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sea_dist.data.fetch_stats import FetchStats
from sea_dist.storage.errors import DatasetError
from sea_dist.storage.fs import display, is_local, make_filesystem
from sea_dist.storage.ids import INT, as_raw_ids, ids_to_numpy, numpy_id_kind
from sea_dist.storage.retry import with_retries
from sea_dist.storage.schema import FEATURE_COLUMNS, check_feature_shard, item_id_column, statistics_bounds
from sea_dist.storage.shards import SHARD_GLOB, Shard, decoding, list_shards

__all__ = ["FeatureStore", "open_feature_stores"]


log = logging.getLogger(__name__)

_MAX_OPEN_FILES = 16


class FeatureStore:
    """Row-level reads of one modality's feature shards (see the module docstring)."""

    def __init__(
        self,
        root: str,
        modality: str,
        dim: int | None = None,
        s3_endpoint_url: str = "",
        cache_rows: int = 1_000_000,
    ):
        if cache_rows < 0:
            raise ValueError(f"cache_rows must be >= 0, got {cache_rows}")
        self.root, self.modality, self.cache_rows = root, modality, int(cache_rows)
        self.s3_endpoint_url = s3_endpoint_url
        self.fs, path = make_filesystem(root, s3_endpoint_url)
        self.folder = posixpath.join(path, "features", modality)
        self.where = display(self.fs, self.folder)
        self.stats = FetchStats()
        self._init_state()
        self._scan(dim)

    # ---------------------------------------------------------------------------------------
    # opening: footers only

    def _scan(self, dim: int | None) -> None:
        fs = self.fs
        files = list_shards(fs, self.folder) if fs.exists(self.folder) else []
        if not files:
            raise DatasetError(
                f"{self.where}: no feature shards ({SHARD_GLOB}) for modality {self.modality!r}"
            )
        self.files: list[str] = files
        self._meta: list[pq.FileMetaData] = []
        self._sizes: list[int | None] = []
        self._names: list[str] = []
        lo, hi, rows, nbytes, shard_of, local_of = [], [], [], [], [], []
        value_type = None
        kinds: dict[str, str] = {}
        for s, f in enumerate(files):
            with Shard(fs, f) as sh:
                t = check_feature_shard(sh, dim, self.modality, kinds, dim_from="the expected dim")
                if dim is None:
                    dim = int(t.list_size)
                if value_type is None:
                    value_type = t.value_type
                md = sh.pf.metadata
                self._meta.append(md)
                self._sizes.append(getattr(sh._fh, "size", None) if sh._fh is not None else None)
                self._names.append(sh.name)
                id_col = item_id_column(md)
                want = [
                    j for j in range(md.num_columns)
                    if md.schema.column(j).path == "item_id" or md.schema.column(j).path.startswith("embedding.")
                ]
                for g in range(md.num_row_groups):
                    rg = md.row_group(g)
                    if rg.num_rows == 0:
                        continue
                    st = rg.column(id_col).statistics
                    bounds = statistics_bounds(st, kinds["kind"])
                    gmin, gmax = bounds if bounds else self._ids_without_stats(sh, g, id_col)
                    lo.append(gmin)
                    hi.append(gmax)
                    rows.append(rg.num_rows)
                    nbytes.append(sum(rg.column(j).total_compressed_size for j in want))
                    shard_of.append(s)
                    local_of.append(g)
        assert dim is not None
        self.dim = int(dim)
        self.stored_dtype = np.float16 if value_type == pa.float16() else np.float32
        self.id_kind = kinds.get("kind", INT)
        self._rg_min = as_raw_ids(lo)
        self._rg_max = as_raw_ids(hi)
        self._rg_rows = np.asarray(rows, dtype=np.int64)
        self._rg_bytes = np.asarray(nbytes, dtype=np.int64)
        self._rg_shard = np.asarray(shard_of, dtype=np.int64)
        self._rg_local = np.asarray(local_of, dtype=np.int64)
        self.num_rows = int(self._rg_rows.sum())
        self.num_row_groups = int(self._rg_rows.size)
        self.total_bytes = int(self._rg_bytes.sum())
        if self.num_row_groups and self.id_kind != INT:
            self._exact_string_bounds()
        if self.num_row_groups:
            bad = np.flatnonzero(self._rg_min > self._rg_max)
            bad = bad if bad.size else np.flatnonzero(self._rg_min[1:] <= self._rg_max[:-1]) + 1
            if bad.size:
                g = int(bad[0])
                raise DatasetError(
                    f"{self._names[self._rg_shard[g]]}: feature rows not sorted by item_id: row group "
                    f"{self._rg_local[g]} holds ids [{self._rg_min[g]}, {self._rg_max[g]}], which overlaps "
                    f"or precedes the previous row group's range ending at {self._rg_max[max(g - 1, 0)]} "
                    f"(modality {self.modality!r}; shards must be sorted and concatenate in name order)"
                )

    def _exact_string_bounds(self) -> None:
        """Some writers truncate string statistics (parquet-rs: 64 bytes): still valid bounds,
        but neighbouring row groups with a common prefix then seem to overlap, and a lookup
        could pick the wrong one. Where neighbours touch, read their ids for exact bounds."""
        touching = np.flatnonzero(self._rg_min[1:] <= self._rg_max[:-1])
        groups = sorted(set(touching.tolist()) | set((touching + 1).tolist()))
        if not groups:
            return
        lo, hi = self._rg_min.tolist(), self._rg_max.tolist()
        for g in groups:
            s, local = int(self._rg_shard[g]), int(self._rg_local[g])
            with Shard(self.fs, self.files[s]) as sh:
                lo[g], hi[g] = self._ids_without_stats(sh, local, item_id_column(sh.pf.metadata))
        self._rg_min, self._rg_max = as_raw_ids(lo), as_raw_ids(hi)

    def _ids_without_stats(self, sh: Shard, g: int, id_col: int) -> tuple[int, int]:
        """Min/max of a row group whose footer lacks (exact) statistics: read its id column once."""
        log.warning("%s: row group %d has no exact item_id statistics; reading its ids to index it", sh.name, g)
        ids = np.sort(ids_to_numpy(sh.read_row_group(g, ["item_id"]).column("item_id")))
        self.stats.bytes_read += int(sh.pf.metadata.row_group(g).column(id_col).total_compressed_size)
        return ids[0].item(), ids[-1].item()

    def _init_state(self) -> None:
        self._lock = threading.Lock()
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._cached_rows = 0
        self._open: OrderedDict[int, tuple[pq.ParquetFile, Any]] = OrderedDict()

    # ---------------------------------------------------------------------------------------
    # fetching

    def fetch(self, item_ids: np.ndarray) -> np.ndarray:
        """float32 ``[len(item_ids), dim]``: the rows of raw ``item_ids``, in the requested order."""
        t0 = time.perf_counter()
        ids = np.asarray(item_ids)
        if ids.ndim != 1:
            ids = ids.reshape(-1)
        if ids.size:
            try:
                kind = numpy_id_kind(ids)
            except TypeError:
                kind = None
            if kind != self.id_kind:
                raise TypeError(
                    f"item_ids must be {'integers' if self.id_kind == INT else 'strings'} "
                    f"(the {self.modality!r} shards' item_id kind), got dtype {ids.dtype}"
                )
        ids = as_raw_ids(ids) if ids.size else np.zeros(0, dtype=self._rg_max.dtype)
        out = np.empty((ids.size, self.dim), dtype=np.float32)
        with self._lock:
            self.stats.fetches += 1
            if ids.size == 0:
                self.stats.seconds += time.perf_counter() - t0
                return out
            uniq, inverse = np.unique(ids, return_inverse=True)
            inverse = inverse.reshape(-1)
            rg = np.searchsorted(self._rg_max, uniq, side="left")
            inside = rg < self.num_row_groups
            inside[inside] = self._rg_min[rg[inside]] <= uniq[inside]
            if not inside.all():
                self._missing(uniq[~inside])
            # uniq is sorted and row groups are ordered, so each row group's ids are one run
            starts = np.flatnonzero(np.r_[True, rg[1:] != rg[:-1]])
            ends = np.r_[starts[1:], uniq.size]
            order = np.argsort(inverse, kind="stable")  # requests grouped by unique id
            req_bounds = np.searchsorted(inverse[order], np.r_[starts, uniq.size])
            groups = rg[starts]
            self.stats.row_groups_skipped += self.num_row_groups - int(groups.size)
            for j, g in enumerate(groups.tolist()):
                a, b = int(starts[j]), int(ends[j])
                entry = self._cache.get(g)
                hit = entry is not None
                if hit:
                    self._cache.move_to_end(g)
                    gids, feats = entry
                    self.stats.row_groups_cached += 1
                else:
                    gids, feats = self._read_row_group(g)
                pos = np.searchsorted(gids, uniq[a:b])
                pos_c = np.minimum(pos, gids.size - 1)
                absent = gids[pos_c] != uniq[a:b]
                if absent.any():
                    self._missing(uniq[a:b][absent])
                req = order[req_bounds[j] : req_bounds[j + 1]]
                out[req] = feats[pos_c[inverse[req] - a]]  # float16 upcast happens in this copy
                n_req = int(req.size)
                if hit:
                    self.stats.cache_hits += n_req
                else:
                    self.stats.cache_misses += n_req
            self.stats.rows_served += int(ids.size)
            self.stats.seconds += time.perf_counter() - t0
        return out

    def _missing(self, missing: np.ndarray) -> None:
        raise DatasetError(
            f"{self.where}: item id {missing[0].item()} has no feature row in modality {self.modality!r}"
            + (f" ({missing.size} requested ids missing, e.g. {missing[:5].tolist()})" if missing.size > 1 else "")
        )

    def _read_row_group(self, g: int) -> tuple[np.ndarray, np.ndarray]:
        s, local = int(self._rg_shard[g]), int(self._rg_local[g])
        name = self._names[s]

        def read() -> pa.Table:
            pf = self._parquet_file(s)
            with decoding(name, f"row group {local}: "):
                return pf.read_row_group(local, columns=list(FEATURE_COLUMNS))

        def reopen(_error: BaseException) -> None:
            self.stats.retries += 1
            self._close_file(s)

        table = with_retries(read, f"reading {name} row group {local}", on_retry=reopen)
        self.stats.row_groups_read += 1
        self.stats.bytes_read += int(self._rg_bytes[g])
        if table.num_rows != self._rg_rows[g]:
            raise DatasetError(
                f"{name}: row group {local} has {table.num_rows} rows, its footer declares {self._rg_rows[g]}"
            )
        id_col = table.column("item_id")
        emb = table.column("embedding")
        if id_col.null_count or emb.null_count:
            raise DatasetError(f"{name}: row group {local} has null item_id or embedding values")
        try:
            gids = ids_to_numpy(id_col)
        except (pa.ArrowInvalid, ValueError) as e:
            raise DatasetError(f"{name}: row group {local}: bad item_id values ({e})") from e
        if gids.size > 1 and not (gids[1:] > gids[:-1]).all():
            r = int(np.flatnonzero(gids[1:] <= gids[:-1])[0]) + 1
            raise DatasetError(
                f"{name}: feature rows not sorted by item_id (or duplicated) in row group {local}: "
                f"item id {gids[r]} follows item id {gids[r - 1]} (modality {self.modality!r})"
            )
        parts = [c.flatten().to_numpy(zero_copy_only=False).reshape(-1, self.dim) for c in emb.chunks]
        feats = parts[0] if len(parts) == 1 else np.concatenate(parts)
        # NaN/inf would poison every row they propagate to: row sums flag them cheaply
        bad = np.flatnonzero(~np.isfinite(feats.sum(axis=1, dtype=np.float32)))
        if bad.size:
            bad = bad[~np.isfinite(feats[bad]).all(axis=1)]
            if bad.size:
                raise DatasetError(
                    f"{name}: NaN or inf in feature row of item id {gids[int(bad[0])]} (modality {self.modality!r})"
                )
        if 0 < gids.size <= self.cache_rows:
            self._cache[g] = (gids, feats)
            self._cached_rows += int(gids.size)
            while self._cached_rows > self.cache_rows:
                _, (old_ids, _) = self._cache.popitem(last=False)
                self._cached_rows -= int(old_ids.size)
        return gids, feats

    def _parquet_file(self, s: int) -> pq.ParquetFile:
        hit = self._open.get(s)
        if hit is not None:
            self._open.move_to_end(s)
            return hit[0]
        path, md = self.files[s], self._meta[s]
        with decoding(self._names[s]):
            if is_local(self.fs):
                fh = None
                pf = pq.ParquetFile(path, metadata=md, pre_buffer=True)
            else:
                # no read-ahead: s3fs' default cache would fetch 50 MB past every column chunk
                kw: dict[str, Any] = {"cache_type": "none"}
                if self._sizes[s] is not None:
                    kw["size"] = self._sizes[s]
                fh = self.fs.open(path, "rb", **kw)
                pf = pq.ParquetFile(fh, metadata=md, pre_buffer=True)
        self._open[s] = (pf, fh)
        while len(self._open) > _MAX_OPEN_FILES:
            _, (old_pf, old_fh) = self._open.popitem(last=False)
            old_pf.close()
            if old_fh is not None:
                old_fh.close()
        return pf

    def _close_file(self, s: int) -> None:
        """Drop shard ``s``'s open file (after a storage fault its connection may be broken)."""
        pf, fh = self._open.pop(s, (None, None))
        for handle in (pf, fh):
            try:
                if handle is not None:
                    handle.close()
            except Exception:  # noqa: BLE001 - a broken handle is dropped either way
                pass

    # ---------------------------------------------------------------------------------------
    # housekeeping

    @property
    def cached_rows(self) -> int:
        return self._cached_rows

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()
            self._cached_rows = 0

    def take_stats(self) -> FetchStats:
        """The counters since the last call (a snapshot), and reset them."""
        with self._lock:
            return self.stats.reset()

    def close(self) -> None:
        """Close open files and drop the cache (the store stays usable: files reopen lazily)."""
        with self._lock:
            for pf, fh in self._open.values():
                pf.close()
                if fh is not None:
                    fh.close()
            self._open.clear()
            self._cache.clear()
            self._cached_rows = 0

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for k in ("_lock", "_cache", "_cached_rows", "_open"):
            state.pop(k, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_state()

    def __repr__(self) -> str:
        return (
            f"FeatureStore({self.where!r}, dim={self.dim}, rows={self.num_rows}, "
            f"row_groups={self.num_row_groups}, cache_rows={self.cache_rows})"
        )


def open_feature_stores(
    root: str, modalities: dict[str, int], s3_endpoint_url: str = "", cache_rows: int = 1_000_000
) -> dict[str, FeatureStore]:
    """One :class:`FeatureStore` per modality (``{name: dim}``, e.g. ``DatasetMeta.modalities``)."""
    return {
        m: FeatureStore(root, m, dim=int(d), s3_endpoint_url=s3_endpoint_url, cache_rows=cache_rows)
        for m, d in modalities.items()
    }
