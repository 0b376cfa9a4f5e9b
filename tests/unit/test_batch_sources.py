"""Each batch source's contract, checked on the source itself (no Trainer, one process).

* full graph: the evaluation/export embeddings are the model's full forward over the dataset's
  graph, and a step's scores are those embeddings' dot products;
* replicated sampled: a step's inputs are the epoch plan's triples, the computation graph DGL
  draws for them under the step's seed and their feature rows — what the loop produced inline
  before the sources existed;
* partitioned (one partition): every local training edge once per epoch, batches in prepared
  (global) user ids the tables serve, evaluation embeddings that keep exactly the ranked users'
  rows; and the per-rank checkpoint shard merges only into its own ``state.pt``.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sea_dist.config import Config
from sea_dist.config import apply_overrides
from sea_dist.data.dataset import load_dataset
from sea_dist.sources.synthetic import SyntheticSpec, write_synthetic
from sea_dist.graph.build import build_train_graph
from sea_dist.graph.dgl_compat import dgl
from sea_dist.graph.sampler import BatchSampler
from sea_dist.model.sea import SEA
from sea_dist.runtime.distributed import WorkerContext
from sea_dist.train.epoch_data import EpochPlan, NegativeSampler
from sea_dist.train.prefetch import InputThread
from sea_dist.train.sources import StepInputs, make_source
from sea_dist.train.sources import partition_checkpoint


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("sources") / "data")
    write_synthetic(SyntheticSpec(n_users=120, n_items=60, n_interactions=1500, modalities={"image": 6, "text": 4}), root)
    return root


def _cfg(root: str, **overrides) -> Config:
    return apply_overrides(Config(), {
        "data.root": root, "graph.fanouts": [3, 2], "graph.knn_fanout": 4, "train.batch_size": 64,
        "model.embedding_dim": 8, "output.output_dir": "", **overrides,
    })


def _source_and_model(cfg: Config):
    torch.manual_seed(cfg.train.seed)
    source = make_source(cfg, WorkerContext())
    model = SEA(source.modality_dims, cfg.model)
    source.make_tables(model.modalities)
    return source, model


def test_full_graph_embeddings_are_the_models_full_forward(root):
    cfg = _cfg(root, **{"train.full_graph": True})
    source, model = _source_and_model(cfg)
    assert source.name == "full_graph" and source.prefetch_depth == 0
    assert source.table_optimizers() == []  # the tables train under the dense Adam
    assert {id(p) for p in source.dense_table_parameters()} == {id(p) for p in source.tables.parameters()}
    ds = load_dataset(root)
    users, items = ds.split_edges(0)
    graph = build_train_graph(ds.n_users, ds.n_items, users, items, ds.features, cfg.graph).full_graph()
    features = {m: torch.from_numpy(f) for m, f in ds.features.items()}
    model.eval()
    with torch.no_grad():
        expected_users, expected_items = model.forward_full(features, source.tables, graph)
        got_users, got_items = source.embeddings(model, evaluation=True)
        assert torch.equal(got_users, expected_users) and torch.equal(got_items, expected_items)
        plan = source.plan_epoch(0)
        u, p, n = plan.local_batch(0, 0, 1)
        pos, neg, _, rows = source.forward(model, StepInputs(u, p, n, 1.0, torch.Generator()))
    assert rows is source.tables
    torch.testing.assert_close(pos, (expected_users[u] * expected_items[p]).sum(1))
    torch.testing.assert_close(neg, (expected_users[u] * expected_items[n]).sum(1))


def test_sampled_step_inputs_are_the_plan_triples_dgl_graph_and_feature_rows(root):
    cfg = _cfg(root)
    source, _ = _source_and_model(cfg)
    assert source.name == "sampled" and source.table_optimizers() == [source.table_optimizer]
    ds = load_dataset(root)
    users, items = ds.split_edges(0)
    expected_plan = EpochPlan(users, items, NegativeSampler(users, items, ds.n_items), 64, cfg.train.seed, 1)
    plan = source.plan_epoch(1)
    assert plan.num_steps(1) == expected_plan.num_steps(1)
    graph = build_train_graph(ds.n_users, ds.n_items, users, items, ds.features, cfg.graph)
    sampler = BatchSampler(graph, cfg.graph.fanouts, cfg.graph.knn_fanout, cfg.model.n_mm_layers)
    thread = InputThread.shared()  # DGL's random engine is per thread: sample where the loop does
    for step in range(3):
        triples = plan.local_batch(step, 0, 1)
        for a, b in zip(triples, expected_plan.local_batch(step, 0, 1)):
            assert np.array_equal(a, b)

        def ours():
            dgl.seed(1000 + step)
            inputs = StepInputs(*triples, 1.0, torch.Generator())
            source.prepare_inputs(inputs)
            return inputs

        def before():  # the inline code the loop ran before the sources
            dgl.seed(1000 + step)
            batch = sampler.sample(*(torch.from_numpy(a) for a in triples))
            return batch, {m: torch.from_numpy(f)[batch.input_items] for m, f in ds.features.items()}

        inputs = thread.run(ours)
        batch, features = thread.run(before)
        assert torch.equal(inputs.batch.input_items, batch.input_items)
        assert torch.equal(inputs.batch.input_users, batch.input_users)
        for ours_hop, their_hop in zip(inputs.batch.ui_hops, batch.ui_hops):
            assert torch.equal(ours_hop.user_to_item.src, their_hop.user_to_item.src)
        assert inputs.features.keys() == features.keys()
        assert all(torch.equal(inputs.features[m], features[m]) for m in features)
        assert inputs.fetched_bytes == sum(t.numel() * t.element_size() for t in features.values())


def test_partitioned_source_on_one_partition(root, tmp_path):
    from sea_dist.prepare.job import run_prepare

    cfg = _cfg(root, **{
        "train.partitioned": True, "train.num_workers": 1, "prepare.num_parts": 1,
        "train.user_tables": "sharded", "eval.user_batch_size": 16,
    })
    cfg.data.prepared = run_prepare(cfg).uri
    source, model = _source_and_model(cfg)
    assert source.name == "partitioned" and source.attaches_checkpoint()
    plan = source.plan_epoch(0)
    steps = plan.num_steps(1)
    seen = np.concatenate([plan.order[plan.bounds[s]:plan.bounds[s + 1]] for s in range(steps)])
    assert np.array_equal(np.sort(seen), np.arange(len(source.train_users)))  # each edge once
    inputs = StepInputs(*plan.local_batch(0, 0, 1), plan.loss_weight(0, 0, 1), torch.Generator())
    InputThread.shared().run(lambda: source.prepare_inputs(inputs))
    assert torch.equal(inputs.batch.seed_users.unique(), source.user_global[torch.from_numpy(inputs.users)].unique())
    rows = source.tables.gather(inputs.batch.input_users)
    assert torch.equal(rows.ids, inputs.batch.input_users)
    model.eval()
    with torch.no_grad():
        all_users, all_items = source.embeddings(model)
        eval_users, eval_items = source.embeddings(model, evaluation=True)
    ranked = np.union1d(source.evaluator.splits["valid"].users, source.evaluator.splits["test"].users)
    assert torch.equal(eval_items, all_items)
    assert torch.equal(eval_users[ranked], all_users[ranked])
    others = np.setdiff1d(np.arange(len(all_users)), ranked)
    assert not eval_users[others].any()


def _progress(next_epoch=2, partial=None) -> dict:
    return {"next_epoch": next_epoch, "partial_epoch": partial or {}}


def test_partition_shard_merges_into_its_own_state_only(tmp_path):
    ctx = WorkerContext()
    progress = _progress(partial={"epoch": 2, "next_step": 5, "sums": {"total": 1.0}})
    partition_checkpoint.write_shard(str(tmp_path), ctx, "v1", progress, {"rows": 1}, {"best_rows": 2})
    shard = torch.load(tmp_path / "rank-00000.pt", weights_only=True)
    state = {"progress": dict(progress, partial_epoch={**progress["partial_epoch"], "sums": {"total": 9.0}}), "best_state": {"model": 3}, "tables": {}, "rank_state": shard}
    merged = partition_checkpoint.merge_shard(state, ctx, "v1")
    assert merged["tables"] == {"rows": 1}
    assert merged["best_state"] == {"model": 3, "tables": {"best_rows": 2}}
    assert merged["progress"]["partial_epoch"] == progress["partial_epoch"]  # the rank's own sums
    with pytest.raises(ValueError, match="prepared version"):
        partition_checkpoint.merge_shard(state, ctx, "v2")
    with pytest.raises(ValueError, match="different reports"):
        partition_checkpoint.merge_shard(dict(state, progress=_progress(next_epoch=3)), ctx, "v1")
    with pytest.raises(ValueError, match="rank 0 of 1"):
        partition_checkpoint.merge_shard(dict(state, rank_state=dict(shard, world_size=2)), ctx, "v1")
    with pytest.raises(ValueError, match="no table shard"):
        partition_checkpoint.merge_shard({k: v for k, v in state.items() if k != "rank_state"}, ctx, "v1")
