"""Partitioned evaluation/export computes the full-graph representations exactly.

P gloo ranks each load one partition and run the layer-wise inference with halo exchanges;
the parent rebuilds the *whole* graph from the dataset (training edges, not what the
partitions stored) plus every owner's kNN rows, loads the same parameters into a one-process
SEA and compares with ``forward_full``: every user and item, halo and kNN-only items included.
"""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from sea_dist.config import Config
from sea_dist.config import apply_overrides
from sea_dist.data.dataset import load_dataset
from sea_dist.storage.ids import ids_to_numpy
from sea_dist.sources.synthetic import SyntheticSpec, write_synthetic
from sea_dist.model.full_graph import FullGraph
from sea_dist.model.sea import SEA, UserTables
from sea_dist.prepare.job import run_prepare
from tests.dist_utils import run_distributed

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SPEC = SyntheticSpec(n_users=180, n_items=80, n_interactions=2400, modalities={"image": 12, "text": 8})


def _overrides(root: str, parts: int, method: str, mm_layers: int, tables: str) -> dict:
    return {
        "data.root": root,
        "train.partitioned": True,
        "train.num_workers": parts,
        "prepare.num_parts": parts,
        "prepare.part_method": method,
        "model.embedding_dim": 8,
        "model.n_mm_layers": mm_layers,
        "train.user_tables": tables,
        "output.output_dir": "",
    }


def _infer(rank: int, world: int, overrides: dict) -> dict:
    import torch

    from sea_dist.runtime.distributed import WorkerContext
    from sea_dist.train.loop import Trainer

    torch.set_num_threads(1)
    trainer = Trainer(apply_overrides(Config(), overrides), WorkerContext.from_process_group())
    with torch.no_grad():  # move the tables off their init so user rows differ in scale too
        for p in trainer.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    users, items = trainer.embeddings()
    lp = trainer.source.part
    own_dst = np.isin(lp.knn_dst, trainer.source.own_items_local)
    return {
        "user_global": lp.user_global[trainer.source.own_users_local],
        "users": users.cpu(),
        "items": items.cpu(),
        "knn": (lp.item_global[lp.knn_dst[own_dst]], lp.item_global[lp.knn_src[own_dst]], lp.knn_w[own_dst]),
        "halo_items": int((~lp.item_inner).sum()),
        "model": {k: v.clone() for k, v in trainer.model.state_dict().items()},
        "tables": trainer.tables.gather_full(),
        "exchange": trainer.source.inference_exchange,
    }


def _prepared_index(map_raw: np.ndarray, raw: np.ndarray) -> np.ndarray:
    sorter = np.argsort(map_raw, kind="stable")
    found = sorter[np.searchsorted(map_raw, raw, sorter=sorter)]
    assert np.array_equal(map_raw[found], raw)
    return found


@pytest.mark.parametrize(
    "parts,method,ids,mm_layers,tables",
    [
        (2, "random", "int", 1, "sharded"),
        (2, "metis", "str", 1, "replicated"),
        (3, "random", "str", 2, "sharded"),
        (3, "metis", "int", 1, "sharded"),
    ],
)
def test_partitioned_embeddings_equal_full_graph(parts, method, ids, mm_layers, tables, tmp_path):
    root = str(tmp_path / "data")
    if ids == "str":
        from tests.string_ids import write_string_id_synthetic

        write_string_id_synthetic(SPEC, root)
    else:
        write_synthetic(SPEC, root)
    overrides = _overrides(root, parts, method, mm_layers, tables)
    prepared = run_prepare(apply_overrides(Config(), overrides))
    overrides["data.prepared"] = prepared.uri
    ranks = run_distributed(_infer, parts, overrides)

    # the whole graph, from the dataset itself, in prepared ids
    ds = load_dataset(root)
    maps = {
        name: ids_to_numpy(pq.read_table(f"{prepared.uri}/id_maps/{name}.parquet").column("raw_id"))
        for name in ("users", "items")
    }
    user_of = _prepared_index(maps["users"], ds.user_raw_ids)  # dataset index -> prepared id
    item_of = _prepared_index(maps["items"], ds.item_raw_ids)
    train_u, train_i = ds.split_edges(0)
    knn = [np.concatenate(parts_) for parts_ in zip(*(r["knn"] for r in ranks))]
    n_users, n_items = ds.n_users, ds.n_items
    assert len(np.unique(knn[0])) == n_items  # every item's kNN row came from exactly one owner
    graph = FullGraph.from_edges(
        n_users, n_items,
        torch.from_numpy(user_of[train_u]), torch.from_numpy(item_of[train_i]),
        torch.from_numpy(knn[0]), torch.from_numpy(knn[1]), torch.from_numpy(knn[2]),
    )
    features = {}
    for m, f in ds.features.items():
        rows = np.empty_like(f)
        rows[item_of] = f
        features[m] = torch.from_numpy(rows)
    cfg = apply_overrides(Config(), overrides)
    model = SEA(dict(ds.meta.modalities), cfg.model)
    model.load_state_dict(ranks[0]["model"])
    model.eval()
    tables = UserTables(n_users, model.modalities, cfg.model.embedding_dim)
    tables.load_state_dict(ranks[0]["tables"])
    with torch.no_grad():
        full_users, full_items = model.forward_full(features, tables, graph)

    assert sum(r["halo_items"] for r in ranks) > 0  # there is a halo to get right
    for r in ranks:
        torch.testing.assert_close(r["items"], full_items, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(r["users"], full_users[torch.from_numpy(r["user_global"])], atol=1e-5, rtol=1e-5)
        exchange = r["exchange"]
        assert exchange["layers"] == cfg.model.n_ui_layers + mm_layers
        assert exchange["bytes_received"] > 0
    assert sum(len(r["user_global"]) for r in ranks) == n_users
