"""Column and schema checks of Parquet shards, with errors that name the file and the column.

The feature-shard schema (``item_id`` + ``embedding: fixed_size_list<float32|float16>[dim]``)
is checked here once, by :func:`check_feature_shard`, for both the dataset loader (which knows
the dim from ``dataset.json``) and the feature store (which may learn it from the first shard).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sea_dist.storage.errors import DatasetError
from sea_dist.storage.ids import INT, arrow_id_kind, ids_to_numpy
from sea_dist.storage.shards import Shard

__all__ = [
    "FEATURE_COLUMNS",
    "check_columns",
    "check_int_column",
    "check_id_column",
    "check_feature_shard",
    "non_null_column",
    "id_numpy",
    "int_numpy",
    "item_id_column",
    "statistics_bounds",
]

#: the columns of a feature shard, in the order readers ask for them
FEATURE_COLUMNS = ("item_id", "embedding")


def check_columns(shard: Shard, expected: Sequence[str]) -> pa.Schema:
    schema = shard.pf.schema_arrow
    missing = [c for c in expected if c not in schema.names]
    if missing:
        raise DatasetError(
            f"{shard.name}: missing column(s) {missing} (found {schema.names}; expected {list(expected)})"
        )
    return schema


def check_int_column(shard: Shard, schema: pa.Schema, column: str, want: str) -> None:
    t = schema.field(column).type
    if not pa.types.is_integer(t):
        raise DatasetError(f"{shard.name}: column {column!r} has type {t}, expected {want}")


def check_id_column(shard: Shard, schema: pa.Schema, column: str, kinds: dict[str, str]) -> None:
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



def check_feature_shard(
    shard: Shard, dim: int | None, modality: str, kinds: dict[str, str], dim_from: str = "dataset.json"
) -> pa.DataType:
    """Check one feature shard's schema; return its ``embedding`` type (a fixed-size list).

    ``dim`` None accepts the shard's own dim (the caller then holds every later shard to it);
    ``dim_from`` names where the expected dim came from, for the error message. ``kinds`` is
    shared by every shard of the item id column (one id kind across shards and modalities).
    """
    schema = check_columns(shard, FEATURE_COLUMNS)
    check_id_column(shard, schema, "item_id", kinds)
    t = schema.field("embedding").type
    if not pa.types.is_fixed_size_list(t) or t.value_type not in (pa.float32(), pa.float16()):
        raise DatasetError(
            f"{shard.name}: column 'embedding' has type {t}, expected "
            f"fixed_size_list<float32|float16>[{dim if dim else 'dim'}]"
        )
    if dim is not None and t.list_size != dim:
        raise DatasetError(
            f"{shard.name}: embedding dim {t.list_size} disagrees with {dim_from} "
            f"(modality {modality!r} has dim {dim})"
        )
    return t


def non_null_column(shard: Shard, table: pa.Table, column: str) -> pa.ChunkedArray:
    col = table.column(column)
    if col.null_count:
        row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise DatasetError(f"{shard.name}: column {column!r} has a null at row {row}")
    return col


def id_numpy(shard: Shard, table: pa.Table, column: str) -> np.ndarray:
    """An id column as int64 or unicode numpy (:func:`sea_dist.storage.ids.ids_to_numpy`); no nulls."""
    col = non_null_column(shard, table, column)
    try:
        return ids_to_numpy(col)
    except pa.ArrowInvalid as e:
        raise DatasetError(f"{shard.name}: column {column!r} does not fit int64 ({e})") from e
    except ValueError as e:
        raise DatasetError(f"{shard.name}: column {column!r}: {e}") from e


def int_numpy(shard: Shard, table: pa.Table, column: str) -> np.ndarray:
    """An integer column as int64 numpy (narrower ints are accepted and widened; nulls are not)."""
    col = non_null_column(shard, table, column)
    if col.type != pa.int64():
        try:
            col = pc.cast(col, pa.int64())  # safe cast: uint64 > 2**63 fails loudly
        except pa.ArrowInvalid as e:
            raise DatasetError(f"{shard.name}: column {column!r} does not fit int64 ({e})") from e
    return col.to_numpy()


def item_id_column(md: pq.FileMetaData) -> int:
    """Index of the ``item_id`` column chunk in a shard's footer (for its row-group statistics)."""
    return next(j for j in range(md.num_columns) if md.schema.column(j).path == "item_id")


def statistics_bounds(st, kind: str) -> tuple | None:
    """A row group's (min, max) item id from its footer, or None when absent or undecodable
    (a truncated string bound can end inside a UTF-8 sequence)."""
    if st is None or not st.has_min_max:
        return None
    as_id = int if kind == INT else str
    try:
        return as_id(st.min), as_id(st.max)
    except (ValueError, UnicodeDecodeError):
        return None
