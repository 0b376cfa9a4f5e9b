"""Filesystems for dataset roots, prepared versions and outputs: a local path, ``file://`` or ``s3://``.

Every package that touches object storage (the dataset reader, the feature store, the
importers, prepare, outputs, publishing, checkpoints) opens it through :func:`make_filesystem`,
so the S3 client settings (endpoint override, botocore retries and timeouts, no listing cache)
are decided in one place.
"""
from __future__ import annotations

import os
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from sea_dist.storage.retry import s3_config_kwargs

__all__ = ["make_filesystem", "is_local", "display", "write_table"]


def make_filesystem(root: str, s3_endpoint_url: str = "") -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path without scheme) for a local path, ``file://`` or ``s3://`` URI.

    The S3 endpoint override goes through ``client_kwargs["endpoint_url"]`` (S3-compatible
    stores: MinIO, SeaweedFS, moto). The region is deliberately *not* put into ``client_kwargs``:
    it comes from ``AWS_DEFAULT_REGION`` (passing ``region_name`` makes bucket creation fail
    on moto/us-east-1 with InvalidLocationConstraint). Directory listings are not cached, so a
    long-lived process sees shards that another process wrote after it first looked. The
    client retries transient faults per request with the botocore retry mode, attempts and
    timeouts in force (:func:`sea_dist.storage.retry.s3_config_kwargs`, from the ``data`` config).
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


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def display(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A path as the user would write it (with its scheme), for error messages."""
    return path if is_local(fs) else fs.unstrip_protocol(path)



def write_table(fs: fsspec.AbstractFileSystem, path: str, table: pa.Table, **kwargs: Any) -> None:
    if is_local(fs):
        pq.write_table(table, path, **kwargs)
    else:
        with fs.open(path, "wb") as f:
            pq.write_table(table, f, **kwargs)
