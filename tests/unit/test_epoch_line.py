"""The one console line per epoch goes through ``logging`` (the loop's module logger, INFO), so
the CLI's and Ray Train's handlers show it once; its text is unchanged."""
from __future__ import annotations

import logging

from sea_dist.config import Config
from sea_dist.sources.synthetic import SyntheticSpec, write_synthetic
from sea_dist.runtime.distributed import WorkerContext
from sea_dist.train.loop import Trainer
from sea_dist.train.run_records import LOSS_TERMS, EpochTimes, epoch_line


def test_epoch_line_text():
    losses = {"total": 0.5, "bpr": 0.25, "club": 0.125, "align": 0.0625}
    times = EpochTimes(train_s=12.34, eval_s=1.06)
    line = epoch_line(3, losses, "recall@20", 0.123456, {"recall@20": 0.1}, times, improved=True)
    assert line == (
        "epoch    3 | loss 0.5000 (bpr 0.2500 club 0.1250 align 0.0625) | valid recall@20 0.1235 | "
        "test recall@20 0.1000 | 12.3s train, 1.1s eval *"
    )


def test_each_epoch_logs_its_line_once(tmp_path, caplog):
    root = write_synthetic(
        SyntheticSpec(n_users=40, n_items=30, n_interactions=400, modalities={"image": 4}, name="lines"),
        str(tmp_path / "data"),
    )
    cfg = Config()
    cfg.data.root, cfg.output.output_dir, cfg.train.full_graph = root, str(tmp_path / "out"), True
    cfg.eval.topk, cfg.train.epochs = [20], 3
    trainer = Trainer(cfg, WorkerContext())
    scores = iter([0.1, 0.3, 0.2])
    trainer.train_epoch = lambda epoch: (dict.fromkeys(LOSS_TERMS, 0.0), EpochTimes())

    def validate():
        score = next(scores)
        return {"recall@20": score}, {"recall@20": score / 2}, 0.0

    trainer.validate = validate
    with caplog.at_level(logging.INFO, logger="sea_dist.train.loop"):
        trainer.fit()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ") and "| loss" in r.getMessage()]
    assert [line.split(" |")[0] for line in lines] == ["epoch    0", "epoch    1", "epoch    2"]
    assert [line.endswith(" *") for line in lines] == [True, True, False]
    assert all(r.name == "sea_dist.train.loop" and r.levelno == logging.INFO for r in caplog.records if "| loss" in r.getMessage())
