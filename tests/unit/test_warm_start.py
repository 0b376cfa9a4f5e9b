"""Warm start from a published model: id translation, new and gone users, fresh optimizer."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sea_dist.config import Config
from sea_dist.data.meta import DatasetMeta
from sea_dist.data.writer import write_dataset
from sea_dist.sources.synthetic import SyntheticSpec, generate
from sea_dist.train import launcher
from sea_dist.runtime.distributed import WorkerContext
from sea_dist.train.loop import Trainer
from sea_dist.train.warm_start import WarmStartError, load_published_model

SPEC = SyntheticSpec(n_users=160, n_items=70, n_interactions=2200, modalities={"image": 8, "text": 6}, name="warm")


def _cfg(root, out, **train):
    cfg = Config()
    cfg.data.root, cfg.output.output_dir = root, str(out)
    cfg.train.full_graph, cfg.train.epochs, cfg.train.batch_size = True, 2, 512
    cfg.model.club_inner_steps = 2
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


@pytest.fixture(scope="module")
def days(tmp_path_factory):
    base = tmp_path_factory.mktemp("warm")
    meta, users, items, splits, features, item_ids = generate(SPEC)
    yesterday = write_dataset(str(base / "day1"), meta, users, items, splits, features, item_ids) or str(base / "day1")
    uniq = np.unique(users)
    gone = uniq[:10]  # users that left
    keep = ~np.isin(users, gone)
    donors = uniq[10:15]  # five new users, with copies of existing users' histories
    new_rows = np.isin(users, donors)
    new_users = np.concatenate([users[keep], users[new_rows] + 10_000_000])
    new_items = np.concatenate([items[keep], items[new_rows]])
    new_splits = np.concatenate([splits[keep], splits[new_rows]])
    n_users = len(np.unique(new_users))
    today_meta = DatasetMeta(
        name="warm", version="day2", n_users=n_users, n_items=meta.n_items, n_interactions=len(new_users),
        modalities=meta.modalities,
        splits={n: int((new_splits == i).sum()) for i, n in enumerate(("train", "valid", "test"))},
    )
    write_dataset(str(base / "day2"), today_meta, new_users, new_items, new_splits, features, item_ids)
    return str(base / "day1"), str(base / "day2"), gone, donors


def test_warm_start_translates_users_and_initialises_new_ones(days, tmp_path):
    day1, day2, gone, donors = days
    out = tmp_path / "models"
    launcher.run(_cfg(day1, out))
    published = load_published_model(str(out))
    assert published["mode"] == "full_graph" and published["modalities"] == ["image", "text"]

    trainer = Trainer(_cfg(day2, out, warm_start="latest"), WorkerContext())
    report = trainer.warm_start_report
    assert report["kept_users"] == len(np.unique(published["user_raw_ids"].numpy())) - len(gone)
    assert report["dropped_users"] == len(gone) and report["new_users"] == len(donors)
    assert report["new_users_initialised_from_items"] == len(donors) and report["optimizer"] == "fresh"
    # dense parameters are the published ones
    for name, tensor in published["model"].items():
        assert torch.equal(trainer.model.state_dict()[name], tensor)
    # a kept user's rows moved from its old contiguous id to its new one
    old_ids = published["user_raw_ids"].numpy()
    raw = trainer.source.dataset.user_raw_ids[3]
    old_row = int(np.flatnonzero(old_ids == raw)[0])
    for m in ("image", "text"):
        assert torch.equal(trainer.tables.preferences[m].weight[3], published["tables"][f"preferences.{m}.weight"][old_row])
    # a new user's preference row is the mean of its training items' normalised GCN inputs
    new_index = int(np.flatnonzero(trainer.source.dataset.user_raw_ids == donors[0] + 10_000_000)[0])
    its_items = trainer.source.train_items[trainer.source.train_users == new_index]
    with torch.no_grad():
        a = F.normalize(trainer.model.branches["text"].gcn_input(trainer.source.features["text"][torch.from_numpy(its_items)]))
    torch.testing.assert_close(trainer.tables.preferences["text"].weight[new_index], a.mean(0))
    # and the warm run trains and publishes
    trainer.fit()


def test_warm_start_from_a_uri_without_a_model_is_a_clear_error(days, tmp_path):
    with pytest.raises(WarmStartError, match="no MANIFEST.json"):
        Trainer(_cfg(days[0], tmp_path / "out", warm_start=str(tmp_path / "empty")), WorkerContext())


def test_latest_with_nothing_published_starts_from_scratch(days, tmp_path, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="sea_dist.train.loop"):
        trainer = Trainer(_cfg(days[0], tmp_path / "first-night", warm_start="latest"), WorkerContext())
    assert trainer.warm_start_report is None
    assert any("training from scratch" in r.message for r in caplog.records)


def test_warm_start_rejects_a_different_model(days, tmp_path):
    out = tmp_path / "models"
    launcher.run(_cfg(days[0], out))
    cfg = _cfg(days[1], tmp_path / "other", warm_start=str(out))
    cfg.model.embedding_dim = 32
    with pytest.raises(WarmStartError, match="does not fit"):
        Trainer(cfg, WorkerContext())


def test_string_ids_publish_and_warm_start(days, tmp_path):
    """A catalog keyed by strings: the published model carries string ids (a list, which
    ``weights_only`` loading accepts), warm start matches users by them, and a model published
    with int ids cannot be matched against string ids."""
    import pyarrow.parquet as pq

    from tests.string_ids import write_string_id_synthetic

    day1 = str(tmp_path / "str-day1")
    users, items = write_string_id_synthetic(SPEC, day1)
    out = tmp_path / "str-models"
    cfg = _cfg(day1, out)
    cfg.output.write_embeddings = True
    launcher.run(cfg)
    published = load_published_model(str(out))
    assert isinstance(published["user_raw_ids"], list) and sorted(published["user_raw_ids"]) == sorted(users.tolist())
    exported = pq.read_table(f"{published['source']}/embeddings/items")
    assert sorted(exported.column("item_id").to_pylist()) == sorted(items.tolist())

    trainer = Trainer(_cfg(day1, out, warm_start="latest"), WorkerContext())
    assert trainer.warm_start_report["kept_users"] == len(users) and trainer.warm_start_report["new_users"] == 0
    row = 5
    old_row = published["user_raw_ids"].index(str(trainer.source.dataset.user_raw_ids[row]))
    assert torch.equal(trainer.tables.preferences["image"].weight[row], published["tables"]["preferences.image.weight"][old_row])

    with pytest.raises(WarmStartError, match="user ids are strs, this dataset's are ints"):
        Trainer(_cfg(days[0], tmp_path / "int-run", warm_start=str(out)), WorkerContext())
