"""Items with features but no training interactions get embeddings and are ranked far above
random (popularity cannot rank them at all: they all have degree 0)."""
import numpy as np
import pytest
import torch

from sea_dist.config import Config
from sea_dist.data.meta import DatasetMeta
from sea_dist.data.writer import write_dataset
from sea_dist.sources.synthetic import SyntheticSpec, generate
from sea_dist.eval.cold_start import cold_item_recall
from sea_dist.runtime.distributed import WorkerContext
from sea_dist.train.loop import Trainer


def test_cold_start_items_are_ranked_far_above_random(tmp_path):
    spec = SyntheticSpec(n_users=600, n_items=400, n_interactions=12000, modalities={"image": 32, "text": 16},
                         name="cold", seed=11)
    meta, users, items, splits, features, item_ids = generate(spec)
    rng = np.random.default_rng(0)
    cold = rng.choice(len(item_ids), size=80, replace=False)  # contiguous indices into item_ids
    cold_raw = item_ids[cold]
    splits = splits.copy()
    splits[np.isin(items, cold_raw)] = 2  # every interaction of a cold item is held out
    meta = DatasetMeta(name="cold", version="cold-1", n_users=meta.n_users, n_items=meta.n_items,
                       n_interactions=meta.n_interactions, modalities=meta.modalities,
                       splits={n: int((splits == i).sum()) for i, n in enumerate(("train", "valid", "test"))})
    root = str(tmp_path / "data")
    write_dataset(root, meta, users, items, splits, features, item_ids)

    cfg = Config()
    cfg.data.root, cfg.output.output_dir = root, str(tmp_path / "out")
    cfg.train.full_graph, cfg.train.epochs, cfg.train.batch_size, cfg.train.lr = True, 8, 1024, 1e-3
    cfg.model.club_inner_steps = 5
    torch.set_num_threads(1)
    trainer = Trainer(cfg, WorkerContext())
    trainer.fit()
    user_emb, item_emb = trainer.embeddings()
    cold_index = np.flatnonzero(np.isin(trainer.source.dataset.item_raw_ids, cold_raw))
    assert trainer.source.item_degree_of(cold_index).max() == 0  # truly unseen in training
    assert torch.isfinite(item_emb[torch.from_numpy(cold_index)]).all()
    test_users, test_items = trainer.source.dataset.split_edges(2)
    result = cold_item_recall(user_emb, item_emb, cold_index, test_users, test_items, k=20)
    print(result)
    assert result["recall@20"] >= 2.0 * result["random_recall@20"], result


def test_cold_item_recall_by_hand():
    users = torch.eye(2)
    items = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.9, 0.0]])
    # cold items 1, 2, 3; user 0 held out item 3 (its best cold item), user 1 item 2 (second best)
    out = cold_item_recall(users, items, np.array([1, 2, 3]), np.array([0, 1]), np.array([3, 2]), k=1)
    assert out["recall@1"] == 0.5 and out["random_recall@1"] == pytest.approx(1 / 3)
