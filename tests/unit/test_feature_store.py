"""FeatureStore: ranged row-group reads of feature shards, locally and on S3 (moto).

The dataset: 200 items with raw ids 1000, 1003, 1006, ... (gaps between ids, so an id inside a
row group's [min, max] can still be missing), modality ``img`` (dim 8), 4 shards of at most 64
rows, row groups of 16 rows -> 13 row groups.
"""
from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sea_dist.storage.errors import DatasetError
from sea_dist.data.meta import DatasetMeta
from sea_dist.data.writer import write_dataset
from sea_dist.data.feature_store import FeatureStore, open_feature_stores
from sea_dist.data.fetch_stats import FetchStats

from tests.conftest import MOTO_BUCKET

N_ITEMS, DIM, RG, PER_SHARD = 200, 8, 16, 64
ITEM_IDS = 1000 + 3 * np.arange(N_ITEMS, dtype=np.int64)


def _features(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"img": rng.standard_normal((N_ITEMS, DIM)).astype(np.float32),
            "txt": rng.standard_normal((N_ITEMS, 4)).astype(np.float32)}


def _write(root: str, feature_dtype: str = "float32", s3_endpoint_url: str = "") -> dict[str, np.ndarray]:
    feats = _features()
    users = np.array([1, 1, 1], dtype=np.int64)
    items = ITEM_IDS[:3]
    meta = DatasetMeta(
        name="fs-test", version="1", n_users=1, n_items=N_ITEMS, n_interactions=3,
        modalities={"img": DIM, "txt": 4}, splits={"train": 1, "valid": 1, "test": 1},
    )
    # write items in a shuffled order: write_dataset sorts them by id, as the contract wants
    perm = np.random.default_rng(1).permutation(N_ITEMS)
    write_dataset(
        root, meta, users, items, np.array([0, 1, 2], dtype=np.int8),
        {m: f[perm] for m, f in feats.items()}, ITEM_IDS[perm],
        items_per_shard=PER_SHARD, row_group_size=RG, feature_dtype=feature_dtype,
        s3_endpoint_url=s3_endpoint_url,
    )
    return feats


def _request(seed: int = 2) -> np.ndarray:
    """A shuffled subset from the first half of the catalog, with duplicates."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(N_ITEMS // 2, size=30, replace=False)
    idx = np.concatenate([idx, idx[:7], idx[3:5]])
    rng.shuffle(idx)
    return idx


@pytest.fixture(scope="module")
def local_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, np.ndarray]]:
    root = str(tmp_path_factory.mktemp("fs") / "ds")
    return root, _write(root)


def _check_fetch_and_cache(store: FeatureStore, feats: np.ndarray) -> None:
    assert store.stats.bytes_read == 0  # footers only at open
    assert store.num_rows == N_ITEMS and store.num_row_groups == 13 and store.dim == DIM
    idx = _request()
    got = store.fetch(ITEM_IDS[idx])
    assert got.dtype == np.float32 and got.shape == (idx.size, DIM)
    np.testing.assert_array_equal(got, feats[idx])  # requested order, duplicates included

    s = store.stats.snapshot()
    assert s.rows_served == idx.size and s.cache_misses == idx.size and s.cache_hits == 0
    # ids from the first half (rows < 100) live in row groups 0..6: the rest are skipped
    assert s.row_groups_skipped >= 6 and s.row_groups_read <= 7
    assert 0 < s.bytes_read < store.total_bytes
    assert s.seconds > 0

    again = store.fetch(ITEM_IDS[idx[::-1]])
    np.testing.assert_array_equal(again, feats[idx[::-1]])
    d = store.take_stats()
    assert d.bytes_read == s.bytes_read and d.row_groups_read == s.row_groups_read  # nothing new read
    assert d.cache_hits == idx.size and d.cache_misses == idx.size
    assert store.stats == FetchStats()  # reset by take_stats


def test_fetch_local_requested_order_skips_and_caches(local_root):
    root, feats = local_root
    _check_fetch_and_cache(FeatureStore(root, "img"), feats["img"])


def test_fetch_s3_requested_order_skips_and_caches(moto_s3):
    root = f"s3://{MOTO_BUCKET}/feature-store/ds"
    feats = _write(root, s3_endpoint_url=moto_s3)
    store = FeatureStore(root, "img", dim=DIM, s3_endpoint_url=moto_s3)
    _check_fetch_and_cache(store, feats["img"])
    # pickles without its open files and cache (Ray tasks, DataLoader workers) and reopens
    clone = pickle.loads(pickle.dumps(store))
    assert clone.cached_rows == 0
    np.testing.assert_array_equal(clone.fetch(ITEM_IDS[[199, 0, 64]]), feats["img"][[199, 0, 64]])
    store.close()


def test_one_row_group_read_per_range(local_root):
    root, feats = local_root
    store = FeatureStore(root, "img")
    # rows 16..31 are exactly row group 1 of shard 0
    got = store.fetch(ITEM_IDS[[31, 16, 20]])
    np.testing.assert_array_equal(got, feats["img"][[31, 16, 20]])
    assert store.stats.row_groups_read == 1 and store.stats.row_groups_skipped == 12
    assert store.stats.bytes_read == store._rg_bytes[1]


def test_float16_on_disk(tmp_path):
    root = str(tmp_path / "ds16")
    feats = _write(root, feature_dtype="float16")
    store = FeatureStore(root, "img")
    assert store.stored_dtype == np.float16
    idx = _request(5)
    got = store.fetch(ITEM_IDS[idx])
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, feats["img"][idx].astype(np.float16).astype(np.float32))


def test_missing_id_names_it_and_the_folder(local_root):
    root, _ = local_root
    store = FeatureStore(root, "img")
    for bad in (1001, 999, 1000 + 3 * N_ITEMS, 1000 + 3 * 70 + 1):  # in a range gap, below, above, inside
        with pytest.raises(DatasetError, match=rf"item id {bad}\b.*'img'") as e:
            store.fetch(np.array([1000, bad, 1003], dtype=np.int64))
        assert "features/img" in str(e.value)


def test_bounded_cache_and_open_feature_stores(local_root):
    root, feats = local_root
    stores = open_feature_stores(root, {"img": DIM, "txt": 4})
    assert set(stores) == {"img", "txt"} and stores["txt"].dim == 4
    small = FeatureStore(root, "img", cache_rows=2 * RG)
    rng = np.random.default_rng(3)
    for _ in range(5):
        idx = rng.integers(0, N_ITEMS, size=50)
        np.testing.assert_array_equal(small.fetch(ITEM_IDS[idx]), feats["img"][idx])
        assert small.cached_rows <= 2 * RG
    np.testing.assert_array_equal(stores["txt"].fetch(ITEM_IDS[[5, 5, 150]]), feats["txt"][[5, 5, 150]])
    assert small.fetch(np.array([], dtype=np.int64)).shape == (0, DIM)
    nocache = FeatureStore(root, "img", cache_rows=0)
    nocache.fetch(ITEM_IDS[[1, 2]])
    nocache.fetch(ITEM_IDS[[1, 2]])
    assert nocache.stats.row_groups_read == 2 and nocache.cached_rows == 0


def test_contract_breaches(local_root, tmp_path):
    root, _ = local_root
    with pytest.raises(DatasetError, match="dim 8 disagrees"):
        FeatureStore(root, "img", dim=16)
    with pytest.raises(DatasetError, match="no feature shards"):
        FeatureStore(root, "audio")
    # two shards whose id ranges overlap: not sorted across shards
    folder = tmp_path / "bad" / "features" / "img"
    folder.mkdir(parents=True)
    for k, ids in enumerate((np.arange(0, 20), np.arange(10, 30))):
        emb = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(ids.size * 2, np.float32)), 2)
        pq.write_table(pa.table({"item_id": pa.array(ids, pa.int64()), "embedding": emb}),
                       str(folder / f"part-{k:05d}.parquet"), row_group_size=8)
    with pytest.raises(DatasetError, match="part-00001.parquet.*not sorted by item_id"):
        FeatureStore(str(tmp_path / "bad"), "img")


def test_string_item_ids_on_s3(moto_s3):
    """SKU-like string ids, whose lexicographic order is not the generation order: row groups
    are indexed by their string min/max statistics, rows come back in the requested order."""
    ids = np.array([f"p{(i * 7919) % 100003}" for i in range(N_ITEMS)])  # unique, scrambled order
    feats = _features()["img"]
    root = f"s3://{MOTO_BUCKET}/feature-store/strings"
    meta = DatasetMeta(
        name="fs-str", version="1", n_users=1, n_items=N_ITEMS, n_interactions=3,
        modalities={"img": DIM}, splits={"train": 1, "valid": 1, "test": 1},
    )
    write_dataset(
        root, meta, np.array(["u1"] * 3), ids[:3], np.array([0, 1, 2], dtype=np.int8), {"img": feats}, ids,
        items_per_shard=PER_SHARD, row_group_size=RG, s3_endpoint_url=moto_s3,
    )
    store = FeatureStore(root, "img", s3_endpoint_url=moto_s3)
    assert store.id_kind == "str" and store.num_row_groups == 13
    idx = _request(7)
    np.testing.assert_array_equal(store.fetch(ids[idx]), feats[idx])
    assert store.stats.row_groups_skipped > 0 and store.stats.bytes_read < store.total_bytes
    with pytest.raises(DatasetError, match=r"item id p4\b.*'img'"):
        store.fetch(np.array([ids[0], "p4"]))
    with pytest.raises(TypeError, match="must be strings"):
        store.fetch(np.array([1, 2]))
    store.close()


def test_string_ids_without_statistics_and_with_loose_bounds(tmp_path):
    """Row groups whose footer has no string statistics are indexed by reading their ids;
    bounds that only bracket the ids (truncated statistics) are tightened where neighbours
    would touch, so lookups pick the right row group."""
    ids = np.array([f"sku-{i:04d}" for i in range(64)])
    feats = _features()["img"][:64]
    folder = tmp_path / "ds" / "features" / "img"
    folder.mkdir(parents=True)
    emb = pa.FixedSizeListArray.from_arrays(pa.array(feats.reshape(-1), pa.float32()), DIM)
    pq.write_table(pa.table({"item_id": ids, "embedding": emb}), folder / "part-00000.parquet",
                   row_group_size=16, write_statistics=False)
    store = FeatureStore(str(tmp_path / "ds"), "img")
    assert store._rg_min.tolist() == ["sku-0000", "sku-0016", "sku-0032", "sku-0048"]
    np.testing.assert_array_equal(store.fetch(ids[[40, 3, 17]]), feats[[40, 3, 17]])
    # a truncated max ("sku-00" + 1 -> "sku-01") would reach into the next group's range
    store._rg_max[0] = "sku-01"
    store._exact_string_bounds()
    assert store._rg_max[0] == "sku-0015"
    np.testing.assert_array_equal(store.fetch(ids[[16, 15]]), feats[[16, 15]])
