"""The data contract: round trips (local, file://, S3) and every validation error.

The bad datasets are built by hand with pyarrow from one tiny, hand-checkable good dataset:

    users 3, 7, 9; items 10, 20, 30, 40, 50; modalities a (dim 4), b (dim 2)
    user 3: 10 train, 20 train, 30 valid, 40 test
    user 7: 10 train, 50 train, 20 valid, 30 test
    user 9: 40 train, 50 valid, 10 test          -> 11 interactions: 5 train, 3 valid, 3 test
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sea_dist.storage.errors import DatasetError
from sea_dist.data.meta import DatasetMeta, load_meta
from sea_dist.data.dataset import load_dataset
from sea_dist.storage.fs import make_filesystem
from sea_dist.data.writer import write_dataset

USERS = np.array([3, 3, 3, 3, 7, 7, 7, 7, 9, 9, 9], dtype=np.int64)
ITEMS = np.array([10, 20, 30, 40, 10, 50, 20, 30, 40, 50, 10], dtype=np.int64)
SPLITS = np.array([0, 0, 1, 2, 0, 0, 1, 2, 0, 1, 2], dtype=np.int8)
ITEM_IDS = np.array([10, 20, 30, 40, 50], dtype=np.int64)
DIMS = {"a": 4, "b": 2}
FEATS = {m: np.arange(5 * d, dtype=np.float32).reshape(5, d) / 10 for m, d in DIMS.items()}
META = {
    "name": "tiny",
    "version": "1",
    "n_users": 3,
    "n_items": 5,
    "n_interactions": 11,
    "modalities": DIMS,
    "splits": {"train": 5, "valid": 3, "test": 3},
}


def write_interactions(root: Path, users=USERS, items=ITEMS, splits=SPLITS, name="part-00000.parquet", table=None):
    folder = root / "interactions"
    folder.mkdir(parents=True, exist_ok=True)
    if table is None:
        table = pa.table(
            {
                "user_id": pa.array(users, pa.int64()),
                "item_id": pa.array(items, pa.int64()),
                "split": pa.array(splits, pa.int8()),
            }
        )
    pq.write_table(table, folder / name)
    return folder / name


def write_features(root: Path, modality: str, ids=ITEM_IDS, emb=None, name="part-00000.parquet", value_type=pa.float32(), table=None):
    folder = root / "features" / modality
    folder.mkdir(parents=True, exist_ok=True)
    if table is None:
        emb = FEATS[modality] if emb is None else emb
        dim = emb.shape[1]
        values = pa.array(emb.reshape(-1).astype(value_type.to_pandas_dtype()), value_type)
        table = pa.table(
            {"item_id": pa.array(ids, pa.int64()), "embedding": pa.FixedSizeListArray.from_arrays(values, dim)}
        )
    pq.write_table(table, folder / name, use_dictionary=False)
    return folder / name


def write_meta(root: Path, meta: dict[str, Any] | None = None, **overrides: Any) -> Path:
    obj = dict(META if meta is None else meta)
    obj.update(overrides)
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps(obj))
    return root / "dataset.json"


def make_good(root: Path) -> Path:
    write_meta(root)
    write_interactions(root)
    for m in DIMS:
        write_features(root, m)
    return root


def expect_error(root: Path, *fragments: str) -> str:
    """Load ``root``, expect a DatasetError whose message contains every fragment."""
    with pytest.raises(DatasetError) as ei:
        load_dataset(str(root))
    msg = str(ei.value)
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in error message {msg!r}"
    return msg


# ---------------------------------------------------------------------------------- happy paths


def test_hand_built_dataset_loads_with_mapped_ids(tmp_path: Path) -> None:
    ds = load_dataset(str(make_good(tmp_path)))
    assert ds.user_raw_ids.tolist() == [3, 7, 9]
    assert ds.item_raw_ids.tolist() == [10, 20, 30, 40, 50]
    # the raw pairs come back through the contiguous indices
    assert ds.user_raw_ids[ds.users].tolist() == USERS.tolist()
    assert ds.item_raw_ids[ds.items].tolist() == ITEMS.tolist()
    assert ds.users.dtype == np.int64 and ds.items.dtype == np.int64 and ds.splits.dtype == np.int8
    u, i = ds.split_edges(2)
    assert sorted(zip(ds.user_raw_ids[u].tolist(), ds.item_raw_ids[i].tolist())) == [(3, 40), (7, 30), (9, 10)]
    assert list(ds.features) == ["a", "b"]  # dataset.json order
    np.testing.assert_array_equal(ds.features["a"], FEATS["a"])
    assert ds.meta.splits == {"train": 5, "valid": 3, "test": 3}
    assert load_meta(str(tmp_path)) == ds.meta


def test_string_ids_load_in_code_point_order_and_map_back(tmp_path: Path) -> None:
    """SKU-style item ids and string user ids: lexicographic, not numeric, order ("sku-100" <
    "sku-20"), every pair maps back, shards and row groups of any size."""
    sku = {10: "sku-9", 20: "sku-10", 30: "sku-200", 40: "sku-3", 50: "b-1"}
    users = np.array([f"user:{u}" for u in USERS])
    items = np.array([sku[i] for i in ITEMS])
    item_ids = np.array([sku[i] for i in ITEM_IDS])
    write_dataset(
        str(tmp_path), DatasetMeta.from_dict(META), users, items, SPLITS, FEATS, item_ids,
        interactions_per_shard=4, items_per_shard=2, row_group_size=1,
    )
    assert pq.ParquetFile(tmp_path / "features" / "a" / "part-00000.parquet").schema_arrow.field("item_id").type == pa.string()
    ds = load_dataset(str(tmp_path))
    assert ds.user_raw_ids.tolist() == ["user:3", "user:7", "user:9"]
    assert ds.item_raw_ids.tolist() == ["b-1", "sku-10", "sku-200", "sku-3", "sku-9"]
    assert ds.user_raw_ids[ds.users].tolist() == users.tolist()
    assert ds.item_raw_ids[ds.items].tolist() == items.tolist()
    # features follow their ids through the writer's sort
    order = np.argsort(item_ids)
    np.testing.assert_array_equal(ds.features["a"], FEATS["a"][order])


def test_string_user_ids_with_int_item_ids(tmp_path: Path) -> None:
    make_good(tmp_path)
    table = pa.table({"user_id": [f"u{u}" for u in USERS], "item_id": ITEMS, "split": pa.array(SPLITS, pa.int8())})
    write_interactions(tmp_path, table=table)
    ds = load_dataset(str(tmp_path))
    assert ds.user_raw_ids.tolist() == ["u3", "u7", "u9"] and ds.item_raw_ids.tolist() == [10, 20, 30, 40, 50]


def test_string_feature_ids_out_of_order_or_of_mixed_kinds_are_refused(tmp_path: Path) -> None:
    make_good(tmp_path)
    str_ids = pa.array(["i10", "i20", "i40", "i30", "i50"])  # i40 before i30
    values = pa.array(FEATS["a"].reshape(-1), pa.float32())
    write_features(tmp_path, "a", table=pa.table({"item_id": str_ids, "embedding": pa.FixedSizeListArray.from_arrays(values, 4)}))
    expect_error(tmp_path, "not sorted by item_id", "item id i30")
    ok = pa.array(["i10", "i20", "i30", "i40", "i50"])
    write_features(tmp_path, "a", table=pa.table({"item_id": ok, "embedding": pa.FixedSizeListArray.from_arrays(values, 4)}))
    f = tmp_path / "features" / "b" / "part-00000.parquet"
    expect_error(tmp_path, str(f), "'item_id'", "int ids", "str ids")  # modality b still has int ids


def test_write_then_load_round_trip_with_shuffled_items_and_many_shards(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    perm = rng.permutation(5)  # writer must sort feature rows by item id
    feats = {m: f[perm] for m, f in FEATS.items()}
    meta = DatasetMeta.from_dict(META)
    write_dataset(
        str(tmp_path), meta, USERS, ITEMS, SPLITS, feats, ITEM_IDS[perm],
        interactions_per_shard=4, items_per_shard=2, row_group_size=1,
    )
    assert sorted(os.listdir(tmp_path / "interactions")) == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert len(os.listdir(tmp_path / "features" / "a")) == 3
    pf = pq.ParquetFile(tmp_path / "features" / "a" / "part-00000.parquet")
    assert pf.num_row_groups == 2  # row_group_size=1, 2 items per shard
    assert pa.types.is_fixed_size_list(pf.schema_arrow.field("embedding").type)
    assert not any("DICT" in e for e in pf.metadata.row_group(0).column(1).encodings)
    assert json.loads((tmp_path / "dataset.json").read_text())["modalities"] == DIMS

    ds = load_dataset(str(tmp_path))
    assert ds.meta == meta
    assert ds.item_raw_ids.tolist() == ITEM_IDS.tolist()
    for m in DIMS:
        np.testing.assert_array_equal(ds.features[m], FEATS[m])  # row i belongs to item_raw_ids[i]
    assert ds.user_raw_ids[ds.users].tolist() == USERS.tolist()
    assert ds.item_raw_ids[ds.items].tolist() == ITEMS.tolist()

    # rewriting with fewer shards must not leave stale part files behind
    write_dataset(str(tmp_path), meta, USERS, ITEMS, SPLITS, FEATS, ITEM_IDS)
    assert os.listdir(tmp_path / "interactions") == ["part-00000.parquet"]
    assert load_dataset(str(tmp_path)).meta == meta


def test_float16_on_disk_is_read_as_float32(tmp_path: Path) -> None:
    meta = DatasetMeta.from_dict(META)
    feats = {m: f + np.float32(1 / 3) for m, f in FEATS.items()}  # not exactly representable in fp16
    write_dataset(str(tmp_path), meta, USERS, ITEMS, SPLITS, feats, ITEM_IDS, feature_dtype="float16")
    t = pq.read_schema(tmp_path / "features" / "a" / "part-00000.parquet").field("embedding").type
    assert t.value_type == pa.float16()
    ds = load_dataset(str(tmp_path))
    assert ds.features["a"].dtype == np.float32
    np.testing.assert_array_equal(ds.features["a"], feats["a"].astype(np.float16).astype(np.float32))


def test_file_uri_and_make_filesystem(tmp_path: Path) -> None:
    make_good(tmp_path)
    ds = load_dataset(f"file://{tmp_path}")
    assert ds.meta.n_interactions == 11
    fs, path = make_filesystem(f"file://{tmp_path}")
    assert path == str(tmp_path) and fs.exists(path + "/dataset.json")
    fs, path = make_filesystem("s3://bucket/some/prefix/", s3_endpoint_url="http://127.0.0.1:1")
    assert path == "bucket/some/prefix"
    assert fs.client_kwargs == {"endpoint_url": "http://127.0.0.1:1"}


def test_s3_round_trip_through_moto(moto_s3: str, tmp_path: Path) -> None:
    root = "s3://sea-dist-test/tiny/v1"
    meta = DatasetMeta.from_dict(META)
    write_dataset(root, meta, USERS, ITEMS, SPLITS, FEATS, ITEM_IDS, items_per_shard=3, s3_endpoint_url=moto_s3)
    ds = load_dataset(root, s3_endpoint_url=moto_s3)
    assert ds.meta == meta
    assert ds.item_raw_ids[ds.items].tolist() == ITEMS.tolist()
    np.testing.assert_array_equal(ds.features["b"], FEATS["b"])
    # errors on S3 name the s3:// file
    fs, _ = make_filesystem(root, moto_s3)
    fs.pipe("sea-dist-test/tiny/v1/interactions/part-00001.parquet", b"not parquet at all")
    with pytest.raises(DatasetError, match=r"s3://sea-dist-test/tiny/v1/interactions/part-00001\.parquet: corrupted"):
        load_dataset(root, s3_endpoint_url=moto_s3)
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("s3://sea-dist-test/nothing-here", s3_endpoint_url=moto_s3)


# ---------------------------------------------------------------------------- dataset.json errors


def test_root_missing(tmp_path: Path) -> None:
    expect_error(tmp_path / "nope", str(tmp_path / "nope"), "does not exist")


def test_dataset_json_missing(tmp_path: Path) -> None:
    make_good(tmp_path)
    (tmp_path / "dataset.json").unlink()
    expect_error(tmp_path, str(tmp_path / "dataset.json"), "missing")


def test_dataset_json_malformed_json(tmp_path: Path) -> None:
    make_good(tmp_path)
    (tmp_path / "dataset.json").write_text("{ not json")
    expect_error(tmp_path, "dataset.json", "malformed JSON")


def test_dataset_json_missing_key(tmp_path: Path) -> None:
    make_good(tmp_path)
    meta = dict(META)
    del meta["n_items"]
    write_meta(tmp_path, meta)
    expect_error(tmp_path, "dataset.json", "missing key", "n_items")


def test_odd_feature_dim_in_dataset_json(tmp_path: Path) -> None:
    make_good(tmp_path)
    write_meta(tmp_path, modalities={"a": 4, "b": 3})
    expect_error(tmp_path, "dataset.json", "'b'", "odd feature dim 3", "halves")


# ------------------------------------------------------------------------------ structure errors


def test_no_interaction_shards(tmp_path: Path) -> None:
    make_good(tmp_path)
    (tmp_path / "interactions" / "part-00000.parquet").unlink()
    expect_error(tmp_path, str(tmp_path / "interactions"), "no interaction shards")


def test_missing_modality_folder(tmp_path: Path) -> None:
    write_meta(tmp_path)
    write_interactions(tmp_path)
    write_features(tmp_path, "a")
    expect_error(tmp_path, str(tmp_path / "features" / "b"), "modality 'b'", "missing")


def test_modality_folder_without_shards(tmp_path: Path) -> None:
    make_good(tmp_path)
    (tmp_path / "features" / "b" / "part-00000.parquet").unlink()
    expect_error(tmp_path, str(tmp_path / "features" / "b"), "no feature shards")


def test_wrong_interaction_column_name(tmp_path: Path) -> None:
    make_good(tmp_path)
    bad = pa.table({"uid": USERS, "item_id": ITEMS, "split": pa.array(SPLITS, pa.int8())})
    f = write_interactions(tmp_path, table=bad)
    expect_error(tmp_path, str(f), "missing column", "user_id")


def test_wrong_interaction_column_type(tmp_path: Path) -> None:
    make_good(tmp_path)
    bad = pa.table({"user_id": USERS, "item_id": ITEMS.astype(np.float64), "split": pa.array(SPLITS, pa.int8())})
    f = write_interactions(tmp_path, table=bad)
    expect_error(tmp_path, str(f), "'item_id'", "type double", "int64 or string")


def test_interaction_item_ids_of_another_kind_than_the_features(tmp_path: Path) -> None:
    make_good(tmp_path)
    bad = pa.table({"user_id": USERS, "item_id": [str(x) for x in ITEMS], "split": pa.array(SPLITS, pa.int8())})
    f = write_interactions(tmp_path, table=bad)
    expect_error(tmp_path, str(f), "'item_id'", "str ids", "features/a/", "int ids")


def test_wrong_embedding_type(tmp_path: Path) -> None:
    make_good(tmp_path)
    bad = pa.table({"item_id": ITEM_IDS, "embedding": pa.array(FEATS["a"].tolist(), pa.list_(pa.float32()))})
    f = write_features(tmp_path, "a", table=bad)
    expect_error(tmp_path, str(f), "'embedding'", "fixed_size_list")


def test_feature_dim_disagrees_with_dataset_json(tmp_path: Path) -> None:
    make_good(tmp_path)
    f = write_features(tmp_path, "a", emb=np.zeros((5, 6), np.float32))
    expect_error(tmp_path, str(f), "dim 6", "dim 4")


def test_corrupted_parquet_shard(tmp_path: Path) -> None:
    make_good(tmp_path)
    f = tmp_path / "interactions" / "part-00000.parquet"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])  # truncated: footer gone
    expect_error(tmp_path, str(f), "corrupted or unreadable")
    g = tmp_path / "features" / "b" / "part-00000.parquet"
    g.write_bytes(b"PAR1" + b"\x00" * 50 + b"PAR1")  # magic bytes, garbage inside
    write_interactions(tmp_path)  # interactions good again: now the feature shard is the problem
    expect_error(tmp_path, str(g), "corrupted or unreadable")


# ---------------------------------------------------------------------------------- data errors


def test_interaction_with_item_without_features(tmp_path: Path) -> None:
    make_good(tmp_path)
    items = ITEMS.copy()
    items[6] = 99  # row 6: (7, 99)
    f = write_interactions(tmp_path, items=items)
    expect_error(tmp_path, str(f), "item id 99", "row 6", "no feature rows")


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_feature(tmp_path: Path, bad_value: float) -> None:
    make_good(tmp_path)
    emb = FEATS["b"].copy()
    emb[3, 1] = bad_value  # item 40
    f = write_features(tmp_path, "b", emb=emb)
    expect_error(tmp_path, str(f), "NaN or inf", "item id 40", "'b'")


def test_non_finite_float16_feature(tmp_path: Path) -> None:
    make_good(tmp_path)
    emb = FEATS["a"].copy()
    emb[1, 0] = np.nan  # item 20
    f = write_features(tmp_path, "a", emb=emb, value_type=pa.float16())
    expect_error(tmp_path, str(f), "NaN or inf", "item id 20")


def test_duplicate_interaction(tmp_path: Path) -> None:
    make_good(tmp_path)
    items = ITEMS.copy()
    items[1] = 10  # user 3 now has item 10 at rows 0 and 1
    f = write_interactions(tmp_path, items=items)
    msg = expect_error(tmp_path, "duplicate interaction", "user_id 3", "item_id 10")
    assert f"{f} row 0" in msg and f"{f} row 1" in msg


def test_duplicate_interaction_across_shards(tmp_path: Path) -> None:
    make_good(tmp_path)
    write_interactions(tmp_path, users=USERS[:6], items=ITEMS[:6], splits=SPLITS[:6])
    g = write_interactions(tmp_path, users=np.r_[USERS[6:], 3], items=np.r_[ITEMS[6:], 40], splits=np.r_[SPLITS[6:], 0].astype(np.int8), name="part-00001.parquet")
    msg = expect_error(tmp_path, "duplicate interaction", "user_id 3", "item_id 40")
    assert f"{g} row 5" in msg


def test_split_value_out_of_range(tmp_path: Path) -> None:
    make_good(tmp_path)
    splits = SPLITS.copy()
    splits[4] = 3
    f = write_interactions(tmp_path, splits=splits)
    expect_error(tmp_path, str(f), "split value 3", "row 4", "{0, 1, 2}")


def test_empty_split(tmp_path: Path) -> None:
    make_good(tmp_path)
    splits = np.where(SPLITS == 2, 1, SPLITS).astype(np.int8)  # no test rows left
    write_interactions(tmp_path, splits=splits)
    expect_error(tmp_path, str(tmp_path / "interactions"), "split 'test'", "no interactions")


def test_modalities_with_different_item_ids(tmp_path: Path) -> None:
    make_good(tmp_path)
    ids = ITEM_IDS.copy()
    ids[4] = 60  # b has 60 instead of 50
    write_features(tmp_path, "b", ids=ids)
    expect_error(tmp_path, str(tmp_path / "features" / "b"), "different item id set", "[50]", "[60]")


def test_unsorted_and_duplicate_feature_rows(tmp_path: Path) -> None:
    make_good(tmp_path)
    f = write_features(tmp_path, "a", ids=np.array([10, 30, 20, 40, 50]))
    expect_error(tmp_path, str(f), "not sorted by item_id", "item id 20 at row 2")
    f = write_features(tmp_path, "a", ids=np.array([10, 20, 20, 40, 50]))
    expect_error(tmp_path, str(f), "duplicate feature row", "item id 20")


@pytest.mark.parametrize(
    "override, fragments",
    [
        ({"n_users": 4}, ["n_users is 4", "data has 3"]),
        ({"n_items": 6}, ["n_items is 6", "data has 5"]),
        ({"n_interactions": 12}, ["n_interactions is 12", "data has 11"]),
        ({"splits": {"train": 4, "valid": 3, "test": 4}}, ["splits.train is 4", "data has 5"]),
    ],
)
def test_counts_disagree_with_dataset_json(tmp_path: Path, override: dict, fragments: list[str]) -> None:
    make_good(tmp_path)
    write_meta(tmp_path, **override)
    expect_error(tmp_path, str(tmp_path / "dataset.json"), *fragments)


def test_null_ids_are_rejected(tmp_path: Path) -> None:
    make_good(tmp_path)
    bad = pa.table(
        {
            "user_id": pa.array([3, None, 7], pa.int64()),
            "item_id": pa.array([10, 20, 30], pa.int64()),
            "split": pa.array([0, 1, 2], pa.int8()),
        }
    )
    f = write_interactions(tmp_path, table=bad)
    expect_error(tmp_path, str(f), "'user_id'", "null at row 1")


def test_narrow_integer_columns_are_accepted(tmp_path: Path) -> None:
    """int32 ids / int64 split are harmless widenings of the contract, not errors."""
    make_good(tmp_path)
    t = pa.table(
        {
            "user_id": pa.array(USERS, pa.int32()),
            "item_id": pa.array(ITEMS, pa.int32()),
            "split": pa.array(SPLITS, pa.int64()),
            "ts": pa.array(np.arange(11), pa.int64()),  # optional column, ignored
        }
    )
    write_interactions(tmp_path, table=t)
    ds = load_dataset(str(tmp_path))
    assert ds.item_raw_ids[ds.items].tolist() == ITEMS.tolist()


def test_error_is_a_value_error() -> None:
    assert issubclass(DatasetError, ValueError)  # callers catching ValueError keep working


@pytest.mark.parametrize("spacing", [3, 2**40])  # dense ids: lookup table; sparse ids: sorted search
@pytest.mark.parametrize("n_query", [50, (1 << 20) + 7])
def test_id_index_dense_and_sparse_paths(spacing: int, n_query: int) -> None:
    from sea_dist.data.dataset import _IdIndex

    rng = np.random.default_rng(0)
    ids = 5 + spacing * np.arange(1000, dtype=np.int64)
    pos = rng.integers(0, 1000, n_query)
    query = ids[pos]
    query[:3] = [4, ids[-1] + 1, ids[10] + 1]  # below, above, between: all absent
    expected = pos.copy()
    expected[:3] = -1
    index = _IdIndex(ids)
    assert (index.lut is not None) == (spacing == 3)
    np.testing.assert_array_equal(index(query), expected)
