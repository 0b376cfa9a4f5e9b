"""Partition-local training in 2 gloo processes: sharded vs replicated user tables give the same
model, each worker holds only its partition, and evaluation/outputs cover every user."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from sea_dist.config import Config
from sea_dist.config_cli import apply_overrides
from sea_dist.data.synthetic import SyntheticSpec, write_synthetic
from sea_dist.prepare.job import run_prepare
from tests.dist_utils import run_distributed

pytestmark = pytest.mark.timeout(300)


def _config(root: str, out: str, tables: str, prepared: str = "") -> Config:
    return apply_overrides(
        Config(),
        {
            "data.root": root,
            "data.prepared": prepared,
            "train.partitioned": True,
            "train.user_tables": tables,
            "train.num_workers": 2,
            "train.epochs": 2,
            "train.batch_size": 256,
            "train.max_steps_per_epoch": 4,
            "model.club_inner_steps": 2,
            "model.embedding_dim": 16,
            "output.output_dir": out,
            "train.run_name": f"test-{tables}",
        },
    )


def _train(rank: int, world: int, cfg_dict: dict) -> dict:
    import torch

    from sea_dist.train.distributed import WorkerContext
    from sea_dist.train.partitioned import PartitionedTrainer

    torch.set_num_threads(1)
    cfg = apply_overrides(Config(), cfg_dict)
    trainer = PartitionedTrainer(cfg, WorkerContext.from_process_group())
    summary = trainer.fit()
    trainer.write_outputs(summary)
    full = trainer.tables.gather_full()
    return {
        "summary": summary,
        "model": {k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
        "tables": full,
        "table_rows": trainer._table_rows(),
        "graph_users": trainer.part.n_users,
        "own_users": int(trainer.part.user_inner.sum()),
    }


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("ds") / "data")
    write_synthetic(SyntheticSpec(n_users=400, n_items=150, n_interactions=6000, modalities={"image": 24, "text": 12}), root)
    cfg = _config(root, "", "sharded")
    return root, run_prepare(cfg)


def _flat(cfg: Config) -> dict:
    from sea_dist.config_cli import config_to_dict

    out = {}

    def walk(prefix, d):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(f"{prefix}{k}.", v)
            else:
                out[f"{prefix}{k}"] = v

    walk("", config_to_dict(cfg))
    return out


def test_sharded_and_replicated_tables_train_the_same_model(prepared, tmp_path):
    root, prep = prepared
    runs = {}
    for kind in ("sharded", "replicated"):
        cfg = _config(root, str(tmp_path / kind), kind, prep.uri)
        runs[kind] = run_distributed(_train, 2, _flat(cfg))
    sharded, replicated = runs["sharded"], runs["replicated"]
    # the same tables (rank 0 assembles them) and the same dense network on every rank
    for name, value in replicated[0]["tables"].items():
        torch.testing.assert_close(sharded[0]["tables"][name], value, atol=1e-6, rtol=1e-5)
    for rank in range(2):
        for name, value in replicated[rank]["model"].items():
            torch.testing.assert_close(sharded[rank]["model"][name], value, atol=1e-6, rtol=1e-5)
    assert sharded[0]["summary"]["valid"] == pytest.approx(replicated[0]["summary"]["valid"], abs=1e-6)
    # memory: a shard holds the partition's own users, the replica all of them
    n_users = prep.manifest["dataset"]["n_users"]
    assert [r["table_rows"] for r in sharded] == [r["own_users"] for r in sharded]
    assert sum(r["table_rows"] for r in sharded) == n_users
    assert all(r["table_rows"] == n_users for r in replicated)
    # every worker holds less than the whole graph's users in its partition
    assert all(r["graph_users"] < n_users for r in sharded) or n_users < 1000
    part = sharded[0]["summary"]["partition"]
    assert part["user_table_rows_per_worker"] == [r["own_users"] for r in sharded]
    assert all(v > 0 for v in part["table_traffic_per_step_per_worker"]["grad_rows_sent"])
    assert all(v > 0 for v in part["partition_bytes_read_per_worker"])


def test_partitioned_run_evaluates_and_exports_every_user(prepared, tmp_path):
    root, prep = prepared
    cfg = _config(root, str(tmp_path / "out"), "sharded", prep.uri)
    results = run_distributed(_train, 2, _flat(cfg))
    summary = results[0]["summary"]
    assert summary["mode"] == "partitioned" and summary["world_size"] == 2
    assert 0.0 <= summary["valid"]["recall@20"] <= 1.0
    assert summary["evaluated_users"]["valid"] > 0
    manifest = json.loads((tmp_path / "out" / "MANIFEST.json").read_text())
    run_dir = tmp_path / "out" / manifest["prefix"]
    users = pq.read_table(run_dir / "embeddings" / "users").column("user_id").to_numpy()
    items = pq.read_table(run_dir / "embeddings" / "items").column("item_id").to_numpy()
    assert len(users) == len(np.unique(users)) == prep.manifest["dataset"]["n_users"]
    assert len(items) == prep.manifest["dataset"]["n_items"]
    part = summary["partition"]
    assert all(v > 0 for v in part["feature_bytes_read_per_epoch_per_worker"])
    assert all(0.0 < v <= 1.0 for v in part["feature_cache_hit_ratio_per_worker"])
