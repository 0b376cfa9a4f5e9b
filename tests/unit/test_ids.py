"""Raw ids: the two kinds, their conversions, and what is refused."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from sea_dist.storage.ids import (
    as_raw_ids,
    arrow_id_kind,
    ids_from_state,
    ids_to_arrow,
    ids_to_numpy,
    ids_to_state,
    numpy_id_kind,
)


def test_kinds_of_arrow_and_numpy_columns():
    assert [arrow_id_kind(t) for t in (pa.int8(), pa.uint64(), pa.string(), pa.large_string(), pa.float64())] == [
        "int", "int", "str", "str", None
    ]
    assert numpy_id_kind(np.array([1], dtype=np.uint32)) == "int"
    assert numpy_id_kind(np.array(["a"])) == "str"
    # pandas hands ints over as objects: they stay ints, not the strings "7" and "9"
    assert as_raw_ids(np.array([7, 9], dtype=object)).tolist() == [7, 9]
    assert as_raw_ids(np.array(["b", "a"], dtype=object)).dtype.kind == "U"
    with pytest.raises(TypeError, match="mixes"):
        as_raw_ids(np.array([1, "a"], dtype=object))
    with pytest.raises(TypeError, match="float64"):
        as_raw_ids(np.array([1.5]))


def test_out_of_range_and_nul_ids_are_refused():
    with pytest.raises(OverflowError, match="18446744073709551615"):
        as_raw_ids(np.array([1, 2**64 - 1], dtype=np.uint64))
    with pytest.raises(pa.ArrowInvalid):
        ids_to_numpy(pa.array([2**64 - 1], pa.uint64()))
    # numpy's unicode arrays drop trailing NULs, which would merge "a" and "a\0"
    with pytest.raises(ValueError, match="NUL"):
        ids_to_numpy(pa.array(["a", "a\x00"]))


def test_code_point_order_is_utf8_byte_order():
    """What Parquet's string statistics compare (bytes) is what numpy sorts (code points)."""
    ids = ["z", "é", "a", "日本", "🙂", "Z"]
    by_numpy = np.sort(ids_to_numpy(pa.array(ids))).tolist()
    assert by_numpy == sorted(ids, key=lambda s: s.encode("utf-8"))


def test_arrow_and_checkpoint_round_trips():
    ints, strs = np.array([5, -3], dtype=np.int64), np.array(["sku-1", "日本"])
    assert ids_to_arrow(ints).type == pa.int64() and ids_to_arrow(strs).type == pa.string()
    assert ids_to_numpy(ids_to_arrow(strs)).tolist() == strs.tolist()
    assert isinstance(ids_to_state(ints), torch.Tensor) and ids_to_state(strs) == ["sku-1", "日本"]
    assert ids_from_state(ids_to_state(ints)).tolist() == [5, -3]
    assert ids_from_state(ids_to_state(strs)).tolist() == strs.tolist()
    assert ids_from_state([]).size == 0
