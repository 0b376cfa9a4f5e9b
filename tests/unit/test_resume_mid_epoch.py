"""A run resumed from a mid-epoch checkpoint replays exactly what the uninterrupted run did."""
import pytest
import torch

from sea_dist.config import Config
from sea_dist.sources.synthetic import SyntheticSpec, write_synthetic
from sea_dist.train.checkpoint import load_checkpoint
from sea_dist.runtime.distributed import WorkerContext
from sea_dist.train.loop import Trainer


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    spec = SyntheticSpec(n_users=200, n_items=80, n_interactions=2500, modalities={"image": 8, "text": 6}, name="resume")
    return write_synthetic(spec, str(tmp_path_factory.mktemp("resume") / "data"))


def _cfg(root, out):
    cfg = Config()
    cfg.data.root = root
    cfg.output.output_dir = str(out)
    cfg.output.write_embeddings = False
    cfg.train.batch_size = 256
    cfg.train.epochs = 2
    cfg.train.checkpoint_every_steps = 3
    cfg.model.club_inner_steps = 3
    return cfg


def test_resume_from_a_step_checkpoint_matches_the_uninterrupted_run(root, tmp_path):
    saved = []

    def keep(metrics, directory):
        if directory is not None:
            saved.append((dict(metrics), load_checkpoint(directory)))

    torch.set_num_threads(1)
    full = Trainer(_cfg(root, tmp_path / "a"), WorkerContext(report=keep))
    full.fit()
    kinds = [m.get("kind") for m, _ in saved]
    assert "step" in kinds and "epoch" in kinds
    # the first step checkpoint of epoch 1: half an epoch of work already done
    metrics, state = next((m, s) for m, s in saved if m.get("kind") == "step" and m["epoch"] == 1)
    assert state["progress"]["partial_epoch"]["next_step"] == metrics["step"] == 3

    resumed = Trainer(_cfg(root, tmp_path / "b"), WorkerContext(report=lambda m, d: None), resume_state=state)
    resumed.fit()
    for part in ("model", "tables", "club"):
        for name, tensor in full.parameters_state()[part].items():
            assert torch.equal(tensor, resumed.parameters_state()[part][name]), f"{part}.{name}"
    assert resumed.progress.history[-1]["valid"] == full.progress.history[-1]["valid"]
    assert resumed.progress.history[-1]["loss"] == pytest.approx(full.progress.history[-1]["loss"])


def test_single_modality_turns_alignment_off_and_says_so(tmp_path, caplog):
    import logging

    spec = SyntheticSpec(n_users=120, n_items=60, n_interactions=1500, modalities={"text": 6}, name="one")
    one = write_synthetic(spec, str(tmp_path / "one"))
    cfg = _cfg(one, tmp_path / "out")
    cfg.train.epochs = 1
    with caplog.at_level(logging.WARNING, logger="sea_dist.train.loop"):
        trainer = Trainer(cfg, WorkerContext())
    assert any("alignment (Solosim) term is off" in r.message for r in caplog.records)
    trainer.fit()
    assert trainer.progress.history[-1]["loss"]["align"] == 0.0
