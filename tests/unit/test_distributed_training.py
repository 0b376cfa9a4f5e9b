"""Distributed logic in 2 gloo processes: sparse table sync, sharded evaluation, replicas."""
import numpy as np
import pytest
import torch

from sea_dist.config import Config, EvalConfig
from sea_dist.sources.synthetic import SyntheticSpec, write_synthetic
from sea_dist.eval.evaluator import Evaluator
from sea_dist.runtime.distributed import WorkerContext
from tests.dist_utils import run_distributed


def _sparse_sync(rank, world):
    from sea_dist.model.sea import UserTables
    from sea_dist.train.sparse_tables import synchronize_sparse_gradients

    tables = UserTables(6, ["a"], 2, sparse=True)
    rows = torch.tensor([[0, 1], [1, 3]][rank])
    (tables.preferences["a"](rows).sum() * (rank + 1)).backward()
    moved = synchronize_sparse_gradients(tables, WorkerContext.from_process_group())
    return tables.preferences["a"].weight.grad.to_dense(), moved


def test_sparse_gradients_are_averaged_over_workers():
    (g0, moved0), (g1, moved1) = run_distributed(_sparse_sync, 2)
    # rank 0 adds 1 to rows 0,1; rank 1 adds 2 to rows 1,3; average over 2 workers
    expected = torch.zeros(6, 2)
    expected[0] = 0.5
    expected[1] = 1.5
    expected[3] = 1.0
    assert torch.equal(g0, expected) and torch.equal(g1, expected)
    assert moved0 == moved1 == 4  # only touched rows travel


def _eval_inputs():
    rng = np.random.default_rng(0)
    n_users, n_items = 50, 40
    edges = {}
    for name, n in (("train", 400), ("valid", 80), ("test", 80)):
        edges[name] = (rng.integers(0, n_users, n), rng.integers(0, n_items, n))
    user_emb = torch.from_numpy(rng.normal(size=(n_users, 8)).astype(np.float32))
    item_emb = torch.from_numpy(rng.normal(size=(n_items, 8)).astype(np.float32))
    return n_users, n_items, edges, user_emb, item_emb


def _sharded_eval(rank, world):
    n_users, n_items, edges, user_emb, item_emb = _eval_inputs()
    ev = Evaluator(n_users, n_items, edges, EvalConfig(user_batch_size=7), WorkerContext.from_process_group())
    return ev.evaluate(user_emb, item_emb, "test"), ev.popularity("valid")


def test_sharded_evaluation_equals_single_process_exactly():
    n_users, n_items, edges, user_emb, item_emb = _eval_inputs()
    single = Evaluator(n_users, n_items, edges, EvalConfig())
    expected = (single.evaluate(user_emb, item_emb, "test"), single.popularity("valid"))
    for result in run_distributed(_sharded_eval, 2) + run_distributed(_sharded_eval, 3):
        assert result == expected


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tiny") / "data")
    spec = SyntheticSpec(n_users=300, n_items=120, n_interactions=3000, modalities={"image": 16, "text": 8}, name="tiny")
    return write_synthetic(spec, root)


def _train_two_steps(rank, world, root, out_dir):
    from sea_dist.train.loop import Trainer

    cfg = Config()
    cfg.data.root = root
    cfg.train.batch_size = 256
    cfg.train.epochs = 1
    cfg.train.max_steps_per_epoch = 3
    cfg.model.club_inner_steps = 5
    cfg.output.output_dir = out_dir
    trainer = Trainer(cfg, WorkerContext.from_process_group())
    summary = trainer.fit()
    state = trainer.parameters_state()
    return {k: {n: t.clone() for n, t in v.items()} for k, v in state.items()}, summary


def test_two_workers_keep_identical_replicas(tiny_dataset, tmp_path):
    """The whole objective (BPR, CLUB with Q's fit, alignment): every replica holds the same
    parameters after the run, and both evaluate the same."""
    (s0, sum0), (s1, sum1) = run_distributed(_train_two_steps, 2, tiny_dataset, str(tmp_path))
    for part in ("model", "tables", "club"):
        for name, tensor in s0[part].items():
            if "running_" in name or "num_batches" in name:
                # BatchNorm statistics: DDP re-broadcasts rank 0's at every forward; they are
                # only used inside the alignment loss, never for scoring
                continue
            assert torch.equal(tensor, s1[part][name]), f"{part}.{name} differs between ranks"
    assert sum0["valid"] == sum1["valid"]
    assert sum0["world_size"] == 2


def _train_steps(rank, world, root, out_dir, steps):
    """``steps`` optimizer steps of the sampled trainer with full neighbourhoods (sampling is
    then deterministic) and the BPR term only; returns (initial, final) parameters."""
    import torch

    from sea_dist.config import apply_overrides
    from sea_dist.train.loop import Trainer

    torch.set_num_threads(1)
    cfg = apply_overrides(Config(), {
        "data.root": root, "output.output_dir": out_dir, "train.batch_size": 256, "train.epochs": 1,
        "train.max_steps_per_epoch": steps, "graph.fanouts": [-1, -1], "graph.knn_fanout": -1,
        "model.alpha_contrast": 0.0, "model.ureg": 0.0, "model.club_inner_steps": 0,
    })
    trainer = Trainer(cfg, WorkerContext.from_process_group())
    copy = lambda: {k: {n: t.detach().clone() for n, t in v.items()} for k, v in trainer.parameters_state().items()}  # noqa: E731
    initial = copy()
    trainer.train_epoch(0)
    return initial, copy()


def test_ddp_replicas_equal_a_one_process_step_on_the_same_global_batch(tiny_dataset, tmp_path):
    """Two workers, each on its half of every global batch of 256, must end where one process
    training on the whole global batches ends: DDP's averaged dense gradients and the averaged
    sparse table rows make a step the global batch's step.

    BPR only, full neighbourhoods: the auxiliary terms are in-batch estimators over each
    worker's own items (docs/fidelity.md), so with them a 2-worker step is by design not the
    1-process step; they are covered by the replica test above."""
    steps = 2
    (init0, two0), (init1, two1) = run_distributed(_train_steps, 2, tiny_dataset, str(tmp_path / "w2"), steps)
    [(init_one, one)] = run_distributed(_train_steps, 1, tiny_dataset, str(tmp_path / "w1"), steps)
    worst_gap, moved = 0.0, []
    for part in ("model", "tables"):
        for name, value in one[part].items():
            if "running_" in name or "num_batches" in name:
                continue
            assert torch.equal(init0[part][name], init_one[part][name])  # same start everywhere
            assert torch.equal(two0[part][name], two1[part][name]), f"{part}.{name} differs between ranks"
            gap = (two0[part][name] - value).abs().max().item()
            worst_gap = max(worst_gap, gap)
            change = (value - init_one[part][name]).abs().max().item()
            if change > 0:
                moved.append((change, f"{part}.{name}"))
            assert gap <= 1e-6 + 1e-3 * change, f"{part}.{name}: 2 workers vs 1 process {gap:.2e} (step moved it {change:.2e})"
    smallest = min(moved)
    print(f"2 workers vs 1 process: worst parameter gap {worst_gap:.2e}; {len(moved)} tensors moved, "
          f"the least by {smallest[0]:.2e} ({smallest[1]})")
    # not vacuous: the BPR path's network and the user tables all moved, by far more than the gap
    assert {"tables.preferences.image.weight", "tables.preferences.text.weight",
            "tables.modality_weights.weight"} <= {n for _, n in moved}
    assert sum(1 for _, n in moved if n.startswith("model.")) >= 8
    assert worst_gap < 1e-3 * smallest[0]


def test_eval_users_without_training_interactions_are_skipped_and_counted():
    edges = {
        "train": (np.array([0, 0, 1]), np.array([0, 1, 2])),
        "valid": (np.array([0, 2, 3]), np.array([2, 1, 0])),  # users 2 and 3 never trained
        "test": (np.array([1]), np.array([0])),
    }
    ev = Evaluator(4, 3, edges, EvalConfig(topk=[1]))
    assert ev.skipped_users == {"valid": 2, "test": 0}
    assert ev.splits["valid"].users.tolist() == [0]


def test_eval_with_only_the_evaluated_users_training_edges_ranks_the_same():
    """Partitioned evaluation with ``eval.max_users`` keeps only the sampled users' training
    edges (they mask the ranked lists); the metrics must not change."""
    rng = np.random.default_rng(3)
    n_users, n_items = 60, 40
    train = (rng.integers(0, n_users, 900), rng.integers(0, n_items, 900))
    held_users = np.arange(0, n_users, 3)  # the sampled users
    valid = (np.repeat(held_users, 2), rng.integers(0, n_items, 2 * len(held_users)))
    test = (np.repeat(held_users, 2), rng.integers(0, n_items, 2 * len(held_users)))
    users_e, items_e = torch.randn(n_users, 8), torch.randn(n_items, 8)
    keep = np.isin(train[0], held_users)
    full = Evaluator(n_users, n_items, {"train": train, "valid": valid, "test": test}, EvalConfig(topk=[5, 10]))
    kept = Evaluator(
        n_users, n_items, {"train": (train[0][keep], train[1][keep]), "valid": valid, "test": test}, EvalConfig(topk=[5, 10])
    )
    for split in ("valid", "test"):
        a, b = full.evaluate(users_e, items_e, split), kept.evaluate(users_e, items_e, split)
        assert a == b and a["recall@10"] > 0
    # a mask that lost an evaluated user's edges would change the ranking
    lossy_train = (train[0][:100], train[1][:100])
    lossy = Evaluator(n_users, n_items, {"train": lossy_train, "valid": valid, "test": test}, EvalConfig(topk=[5, 10]))
    assert lossy.evaluate(users_e, items_e, "test") != full.evaluate(users_e, items_e, "test")
