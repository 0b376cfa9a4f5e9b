"""Parquet shards of a folder (``part-*.parquet``): listing, opening, reading, clearing.

A folder of shards is one table whose rows concatenate in shard-name order. :class:`Shard`
turns pyarrow's decoding errors into :class:`~sea_dist.storage.errors.DatasetError` naming the
file, and retries transient storage faults (:mod:`sea_dist.storage.retry`) by reopening the
file, so that every reader of the data contract (the dataset loader, the feature store) gets
the same error messages and the same fault handling.
"""
from __future__ import annotations

import posixpath
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Sequence

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from sea_dist.storage.errors import DatasetError
from sea_dist.storage.fs import display, is_local
from sea_dist.storage.retry import storage_fault, with_retries

__all__ = [
    "SHARD_GLOB",
    "Shard",
    "list_shards",
    "scan_shards",
    "clear_shards",
    "reset_shards",
    "shard_name",
    "write_parquet",
    "decoding",
]

SHARD_GLOB = "part-*.parquet"


def list_shards(fs: fsspec.AbstractFileSystem, folder: str) -> list[str]:
    """``part-*.parquet`` files of a folder, in name order (the order rows are concatenated in)."""
    return with_retries(
        lambda: sorted(fs.glob(posixpath.join(folder, SHARD_GLOB))), f"listing {display(fs, folder)}"
    )


@contextmanager
def decoding(name: str, where: str = "") -> Iterator[None]:
    """Errors of pyarrow reading a shard: a storage fault (a dropped connection, a timeout, a
    missing key, a denied request) goes up as itself, to be retried or reported as what it is;
    only what is left (the bytes arrived and do not decode) calls the shard corrupted."""
    try:
        yield
    except (pa.ArrowException, OSError, ValueError) as e:
        if isinstance(e, DatasetError) or storage_fault(e) is not None:
            raise
        raise DatasetError(f"{name}: corrupted or unreadable Parquet shard ({where}{e})") from e


class Shard:
    """An open Parquet shard. Decoding errors become DatasetErrors naming the file; transient
    storage faults are retried (the file reopened first), other storage faults raised as such."""

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str):
        self.fs, self.path, self.name = fs, path, display(fs, path)
        self._fh = None
        self._pf: pq.ParquetFile | None = None
        with_retries(self._open, f"opening {self.name}", on_retry=self._drop)

    def _open(self) -> pq.ParquetFile:
        if self._pf is None:
            try:
                with decoding(self.name):
                    if is_local(self.fs):
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
            with decoding(self.name):
                return self._open().read(columns=list(columns))

        return with_retries(read, f"reading {self.name}", on_retry=self._drop)

    def read_row_group(self, rg: int, columns: Sequence[str]) -> pa.Table:
        def read() -> pa.Table:
            with decoding(self.name, f"row group {rg}: "):
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

    def __enter__(self) -> "Shard":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def scan_shards(
    fs: fsspec.AbstractFileSystem, files: Sequence[str], check: Callable[["Shard"], None]
) -> list[int]:
    """Check every shard's schema and return its row count, from the footers only.

    A first pass over footers (cheap) lets the reader fail on a bad schema before reading any
    data and preallocate exact output arrays; shards are opened one at a time, so thousands of
    shards never hold thousands of file handles.
    """
    counts = []
    for f in files:
        with Shard(fs, f) as sh:
            check(sh)
            counts.append(sh.num_rows)
    return counts


def clear_shards(fs: fsspec.AbstractFileSystem, folder: str) -> None:
    """Remove old shards, so a rewrite with fewer shards leaves no stale ``part-*`` behind."""
    old = list_shards(fs, folder) if fs.exists(folder) else []
    if old:
        fs.rm(old)


def reset_shards(fs: fsspec.AbstractFileSystem, folder: str) -> None:
    """Create ``folder`` and remove its old shards: a streamed rewrite starts from an empty folder."""
    fs.makedirs(folder, exist_ok=True)
    old = sorted(fs.glob(posixpath.join(folder, SHARD_GLOB)))
    if old:
        fs.rm(old)


def shard_name(k: int, n: int) -> str:
    """``part-NNNNN.parquet`` for shard ``k`` of ``n``, zero-padded so names sort as numbers."""
    return f"part-{k:0{max(5, len(str(max(n - 1, 0))))}d}.parquet"


def write_parquet(
    fs: fsspec.AbstractFileSystem, path: str, schema: pa.Schema, tables: Iterable[tuple[pa.Table, Any]], **kwargs: Any
) -> None:
    """Write ``(table, row_group_size)`` pairs, one after another, as one Parquet file.

    Tables may be generated lazily, so a streamed shard never holds more than one of them;
    ``kwargs`` go to :class:`pyarrow.parquet.ParquetWriter`. Local paths are written directly,
    other filesystems through an fsspec file that is closed even when writing fails.
    """
    opened: list = []
    try:
        sink: Any = path
        if not is_local(fs):
            sink = fs.open(path, "wb")
            opened.append(sink)
        with pq.ParquetWriter(sink, schema, **kwargs) as w:
            for t, rg in tables:
                w.write_table(t, row_group_size=rg)
    finally:
        for f in opened:
            f.close()
