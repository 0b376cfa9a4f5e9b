"""Raw ids: int64 or strings, one kind per id column of a dataset.

Catalogs key users and items by whatever their source systems use: sparse int64 surrogate keys,
or strings (SKUs, UUIDs, ``"user:123"``). Everything inside training works on contiguous
indices, so raw ids only matter at the edges: reading the data contract, the prepared id maps
(which serving uses to translate back), feature lookups by item id, exported embeddings and
warm start. Those edges hold raw ids as numpy arrays of one of two kinds:

* ``"int"``: ``int64`` (narrower integer columns are widened);
* ``"str"``: numpy unicode (``<U``) arrays. Sorting, ``searchsorted`` and equality run in C on
  them, which is what the id maps, the feature store's range lookups and warm start need.
  Parquet string ids are compared as Python (code point) order, which for UTF-8 is also byte
  order, the order Parquet's statistics and a ``sort_by`` use.

Users and items may differ in kind; every shard (and every modality) of one id column must
agree, and an interaction's ``item_id`` must be of the features' kind.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

INT = "int"
STR = "str"


def arrow_id_kind(t: pa.DataType) -> str | None:
    """The id kind an Arrow column type holds, or None when it cannot hold ids."""
    if pa.types.is_integer(t):
        return INT
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return STR
    return None


def numpy_id_kind(ids: np.ndarray) -> str:
    """``"int"`` or ``"str"``; object arrays are judged by their contents (pandas hands over
    ints as objects, and those must not turn into the strings "123")."""
    if ids.dtype.kind in "iu":
        return INT
    if ids.dtype.kind == "U":
        return STR
    if ids.dtype.kind == "O":
        if all(isinstance(v, str) for v in ids.flat):
            return STR
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in ids.flat):
            return INT
        raise TypeError("raw ids must be all integers or all strings; this object array mixes them")
    raise TypeError(f"raw ids must be integers or strings, got dtype {ids.dtype}")


_INT64_MAX = np.iinfo(np.int64).max


def _checked_int64(arr: np.ndarray) -> np.ndarray:
    """Integers as int64; values beyond int64 (uint64 above 2**63) raise instead of wrapping."""
    if arr.dtype == np.int64:
        return arr
    if arr.size and (arr.dtype.kind == "u" or arr.dtype.kind == "O") and int(arr.max()) > _INT64_MAX:
        raise OverflowError(f"raw id {int(arr.max())} does not fit int64")
    return arr.astype(np.int64)


def ids_to_numpy(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """An Arrow id column (no nulls) as an int64 or unicode numpy array.

    Integer columns are cast safely (uint64 above 2**63 raises ``pa.ArrowInvalid``).
    """
    kind = arrow_id_kind(column.type)
    if kind == INT:
        if column.type != pa.int64():
            column = pc.cast(column, pa.int64())
        return np.asarray(column.to_numpy())
    if kind == STR:
        # numpy unicode arrays drop trailing NULs: "a" and "a\0" would become one id
        if len(column) and pc.any(pc.match_substring(column, "\x00")).as_py():
            raise ValueError("string ids must not contain NUL characters")
        values = column.to_numpy(zero_copy_only=False)
        return values.astype(str) if len(values) else np.zeros(0, dtype="<U1")
    raise TypeError(f"column type {column.type} cannot hold raw ids (integers or strings)")


def as_raw_ids(values) -> np.ndarray:
    """Any list/array of raw ids as the canonical numpy kind (int64 or unicode)."""
    arr = np.asarray(values)
    if arr.size == 0 and arr.dtype.kind not in "iuUO":
        return np.zeros(0, dtype=np.int64)
    if numpy_id_kind(arr) == INT:
        return _checked_int64(arr)
    return arr.astype(str)


def ids_to_arrow(ids: np.ndarray) -> pa.Array:
    """Raw ids for Parquet: ``int64`` or ``string``."""
    ids = as_raw_ids(ids)
    return pa.array(ids, pa.int64() if numpy_id_kind(ids) == INT else pa.string())


def ids_to_state(ids: np.ndarray):
    """Raw ids in a form ``torch.load(weights_only=True)`` accepts: an int64 tensor or a list
    of str (checkpoints and published models carry them for warm start)."""
    import torch

    ids = as_raw_ids(ids)
    if numpy_id_kind(ids) == INT:
        return torch.from_numpy(np.ascontiguousarray(ids))
    return ids.tolist()


def ids_from_state(value) -> np.ndarray:
    """The inverse of :func:`ids_to_state`."""
    if hasattr(value, "numpy"):
        return value.numpy().astype(np.int64, copy=False)
    return as_raw_ids(list(value))


def same_kind(a: np.ndarray, b: np.ndarray) -> bool:
    return numpy_id_kind(a) == numpy_id_kind(b)
