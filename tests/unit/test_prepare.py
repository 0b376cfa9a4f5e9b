"""The prepare job: idempotent versions, what the partitions hold (halo), id maps, S3."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest

from sea_dist.config import Config
from sea_dist.config import ConfigError, apply_overrides, validate_config
from sea_dist.storage.errors import DatasetError
from sea_dist.data.dataset import load_dataset
from sea_dist.sources.synthetic import SyntheticSpec, write_synthetic
from sea_dist.graph.partition import choose_part_method, load_local_partition
from sea_dist.prepare.job import find_prepared, load_prepared, run_prepare

from tests.conftest import MOTO_BUCKET

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPEC = SyntheticSpec(n_users=300, n_items=120, n_interactions=4000, modalities={"image": 16, "text": 8})


def _cfg(root: str, **extra) -> Config:
    return apply_overrides(Config(), {"data.root": root, **extra})


@pytest.fixture()
def root(tmp_path) -> str:
    path = str(tmp_path / "data")
    write_synthetic(SPEC, path)
    return path


def _files(root: str) -> dict[str, float]:
    out = {}
    for d, _, names in os.walk(os.path.join(root, "prepared")):
        for n in names:
            p = os.path.join(d, n)
            out[p] = os.path.getmtime(p)
    return out


def test_rerun_does_nothing_and_changes_give_a_new_version(root):
    first = run_prepare(_cfg(root))
    assert not first.reused
    before = _files(root)
    again = run_prepare(_cfg(root))
    assert again.reused and again.uri == first.uri
    assert _files(root) == before  # nothing rewritten
    assert find_prepared(_cfg(root)).uri == first.uri

    # other settings -> another version beside the first
    three = run_prepare(_cfg(root, **{"prepare.num_parts": 3}))
    assert three.uri != first.uri and three.num_parts == 3
    # changed inputs -> another version
    write_synthetic(SyntheticSpec(**{**SPEC.__dict__, "seed": 5}), root)
    changed = run_prepare(_cfg(root))
    assert changed.uri != first.uri and not changed.reused
    assert len(os.listdir(os.path.join(root, "prepared"))) == 3


def test_an_interrupted_version_is_rebuilt(root):
    prepared = run_prepare(_cfg(root))
    os.remove(os.path.join(prepared.uri, "MANIFEST.json"))  # as if killed before the manifest
    assert find_prepared(_cfg(root)) is None
    with pytest.raises(DatasetError, match="no MANIFEST"):
        load_prepared(prepared.uri)
    rebuilt = run_prepare(_cfg(root))
    assert not rebuilt.reused and rebuilt.uri == prepared.uri


def test_partitions_hold_own_nodes_complete_and_every_edge_once(root):
    prepared = run_prepare(_cfg(root, **{"prepare.part_method": "random"}))
    ds = load_dataset(root)
    m = prepared.manifest
    assert m["partitions"]["method"] == "random"
    users_map = pq.read_table(os.path.join(prepared.uri, "id_maps", "users.parquet")).to_pandas()
    items_map = pq.read_table(os.path.join(prepared.uri, "id_maps", "items.parquet")).to_pandas()
    assert sorted(users_map.raw_id) == sorted(ds.user_raw_ids.tolist())
    assert (users_map.user.to_numpy() == np.arange(ds.n_users)).all()
    tu, ti = ds.split_edges(0)
    truth = set(zip(ds.user_raw_ids[tu].tolist(), ds.item_raw_ids[ti].tolist()))
    assert items_map.train_degree.sum() == len(tu)

    fs = fsspec.filesystem("file")
    trained = []
    owners = np.zeros(ds.n_users, dtype=int)
    for part in range(2):
        lp = load_local_partition(fs, prepared.uri, part)
        lo, hi = m["partitions"]["user_offsets"][part : part + 2]
        assert sorted(lp.user_global[lp.user_inner].tolist()) == list(range(lo, hi))
        # every stored edge is a real training edge; own users and own items are complete
        edges = set(zip(lp.user_raw[lp.ui_users].tolist(), lp.item_raw[lp.ui_items].tolist()))
        assert edges <= truth
        udeg = np.bincount(lp.ui_users, minlength=lp.n_users)
        ideg = np.bincount(lp.ui_items, minlength=lp.n_items)
        assert (udeg[lp.user_inner] == lp.user_degree[lp.user_inner]).all()
        assert (ideg[lp.item_inner] == lp.item_degree[lp.item_inner]).all()
        # every item that can be sampled has its full kNN row (k per modality, merged)
        rows = np.bincount(lp.knn_dst, minlength=lp.n_items)
        assert (rows[: lp.n_dgl_items] >= 10).all() and (rows[lp.n_dgl_items :] == 0).all()
        trained += list(zip(lp.user_raw[lp.ui_users[lp.train_mask]].tolist(),
                            lp.item_raw[lp.ui_items[lp.train_mask]].tolist()))
        owners[lo:hi] += 1
        assert m["partitions"]["parts"][part]["train_edges"] == int(lp.train_mask.sum())
    assert sorted(trained) == sorted(truth)  # each training edge trained by exactly one worker
    assert (owners == 1).all()
    held = sum(pq.read_table(os.path.join(prepared.uri, "eval", f"part-{p}.parquet")).num_rows for p in range(2))
    assert held == m["dataset"]["n_valid"] + m["dataset"]["n_test"]


def test_prepare_on_s3_and_worker_load(moto_s3):
    root = f"s3://{MOTO_BUCKET}/prepare-test"
    write_synthetic(SPEC, root, s3_endpoint_url=moto_s3)
    cfg = _cfg(root, **{"data.s3_endpoint_url": moto_s3})
    prepared = run_prepare(cfg)
    assert prepared.uri.startswith(f"s3://{MOTO_BUCKET}/prepare-test/prepared/p2-")
    assert run_prepare(cfg).reused
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": moto_s3}, skip_instance_cache=True)
    lp = load_local_partition(fs, prepared.uri[len("s3://"):], 1)
    assert lp.loaded_bytes > 0 and lp.train_mask.sum() == prepared.manifest["partitions"]["parts"][1]["train_edges"]


def test_cli_prints_the_manifest_and_fails_clearly(root, tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = subprocess.run([sys.executable, "jobs/prepare.py", f"data.root={root}"], cwd=REPO,
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    manifest = json.loads(out.stdout)  # stdout is the manifest only (DGL's prints go to stderr)
    assert manifest["partitions"]["num_parts"] == 2 and "[prepare] building" in out.stderr
    bad = subprocess.run([sys.executable, "jobs/prepare.py", f"data.root={tmp_path / 'nothing'}"], cwd=REPO,
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "dataset.json" in bad.stderr


def test_part_method_choice_and_config_checks():
    assert choose_part_method("auto", 10, 100) == "metis"
    assert choose_part_method("auto", 1000, 100) == "random"
    assert choose_part_method("random", 10, 100) == "random"
    with pytest.raises(ValueError):
        choose_part_method("spectral", 10, 100)
    for bad in ({"prepare.part_method": "spectral"}, {"train.user_tables": "mirrored"},
                {"train.partitioned": True, "train.full_graph": True},
                {"train.partitioned": True, "train.warm_start": "latest"},
                {"prepare.knn_nprobe": 0}):
        with pytest.raises(ConfigError):
            validate_config(apply_overrides(Config(), bad))


def test_random_partitions_are_reproducible(root, tmp_path):
    a = run_prepare(_cfg(root, **{"prepare.part_method": "random"}))
    first = json.load(open(os.path.join(a.uri, "MANIFEST.json")))["partitions"]["parts"]
    again = run_prepare(_cfg(root, **{"prepare.part_method": "random", "prepare.force": True}))
    assert again.uri == a.uri and not again.reused
    assert again.manifest["partitions"]["parts"] == first


def test_string_ids_prepare_id_maps_and_partitions(tmp_path):
    from tests.string_ids import write_string_id_synthetic

    root = str(tmp_path / "strings")
    users, items = write_string_id_synthetic(SPEC, root)
    prepared = run_prepare(_cfg(root))
    fs = fsspec.filesystem("file")
    maps = {
        kind: pq.read_table(os.path.join(prepared.uri, "id_maps", f"{kind}.parquet"))
        for kind in ("users", "items")
    }
    assert str(maps["items"].schema.field("raw_id").type) == "string"
    user_map = maps["users"].column("raw_id").to_numpy(zero_copy_only=False).astype(str)
    item_map = maps["items"].column("raw_id").to_numpy(zero_copy_only=False).astype(str)
    assert sorted(user_map.tolist()) == sorted(users.tolist()) and sorted(item_map.tolist()) == sorted(items.tolist())
    own = []
    for part in (0, 1):
        lp = load_local_partition(fs, prepared.uri, part)
        assert lp.item_raw.dtype.kind == "U" and lp.user_raw.dtype.kind == "U"
        # the side file's raw ids agree with the maps serving will use
        assert (item_map[lp.item_global] == lp.item_raw).all()
        assert (user_map[lp.user_global] == lp.user_raw).all()
        own += lp.user_raw[lp.user_inner].tolist()
    assert sorted(own) == sorted(users.tolist())  # every user owned exactly once
