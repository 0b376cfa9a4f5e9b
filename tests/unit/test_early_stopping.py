"""MMRec's early-stopping rule on scripted validation-score sequences (hand-checked)."""
import math

import pytest

from sea_dist.train.early_stopping import early_stopping, mmrec_round, should_stop


def _run(scores, stopping_step, best=-math.inf):
    """Feed ``scores`` epoch by epoch; (best epoch, stop epoch or None, per-epoch counters)."""
    counter, best_epoch, counters = 0, -1, []
    for epoch, score in enumerate(scores):
        v = early_stopping(score, best, counter, stopping_step)
        best, counter = v.best, v.counter
        counters.append(counter)
        if v.improved:
            best_epoch = epoch
        if v.stop:
            return best_epoch, epoch, counters
    return best_epoch, None, counters


def test_stops_when_the_counter_exceeds_stopping_step():
    # epochs 2..4 do not improve on epoch 1: counters 1, 2, 3; 3 > 2 stops at epoch 4 (a
    # `counter >= patience` rule would have stopped at epoch 3)
    best_epoch, stop_epoch, counters = _run([0.10, 0.20, 0.20, 0.19, 0.15, 0.30], stopping_step=2)
    assert (best_epoch, stop_epoch) == (1, 4)
    assert counters == [0, 0, 1, 2, 3]


def test_improvement_resets_the_counter():
    scores = [0.1, 0.09, 0.08, 0.11, 0.10, 0.10, 0.10]
    best_epoch, stop_epoch, counters = _run(scores, stopping_step=2)
    assert counters == [0, 1, 2, 0, 1, 2, 3]
    assert (best_epoch, stop_epoch) == (3, 6)


def test_stopping_step_zero_stops_at_the_first_epoch_without_improvement():
    assert _run([0.1, 0.2, 0.2, 0.3], stopping_step=0)[:2] == (1, 2)


def test_a_tie_after_rounding_is_not_an_improvement():
    # 0.12344 rounds to 0.1234, the best so far: not better although the raw score is
    best_epoch, stop_epoch, counters = _run([0.12341, 0.12344], stopping_step=5)
    assert best_epoch == 0 and counters == [0, 1]
    # 0.12346 rounds to 0.1235 > 0.1234: better
    assert _run([0.12341, 0.12346], stopping_step=5)[0] == 1
    # an exact tie is not better either (strictly greater is required)
    assert _run([0.5, 0.5], stopping_step=5)[2] == [0, 1]


def test_rounding_is_numpys_not_pythons():
    # MMRec rounds numpy float64 metrics: 0.12345 -> 0.1234 (numpy), 0.1235 with Python's round
    assert mmrec_round(0.12345) == 0.1234 and round(0.12345, 4) == 0.1235
    assert _run([0.1234, 0.12345], stopping_step=5)[0] == 0  # a tie under numpy's rule
    # and the other way round: 0.12355 -> 0.1236 (numpy), 0.1235 (Python)
    assert mmrec_round(0.12355) == 0.1236 and round(0.12355, 4) == 0.1235
    assert mmrec_round(0.99995) == 1.0


def test_best_holds_the_rounded_score_and_the_first_epoch_always_improves():
    first = early_stopping(0.0, -math.inf, 0, 20)
    assert first.improved and first.best == 0.0 and first.counter == 0 and not first.stop
    # MMRec starts from best = -1: the same decision
    assert early_stopping(0.0, -1.0, 0, 20).improved
    assert early_stopping(0.123456, -1.0, 0, 20).best == 0.1235


def test_reference_patience_trains_21_epochs_past_the_best():
    # patience 20 (the reference): best at epoch 0, then flat scores; the stop comes at epoch 21
    assert _run([0.05] + [0.04] * 40, stopping_step=20)[:2] == (0, 21)
    assert not should_stop(20, 20) and should_stop(21, 20)


@pytest.mark.parametrize("stopping_step", [0, 1, 3, 20])
def test_an_improving_epoch_never_stops(stopping_step):
    v = early_stopping(0.3, 0.2, stopping_step + 5, stopping_step)
    assert v.improved and not v.stop and v.counter == 0


# ---- wired into the training loop: Trainer.fit stops and picks the best epoch by this rule -----
def _scripted_fit(trainer, scores, patience):
    """Run ``Trainer.fit`` with training replaced by nothing and validation by ``scores``."""
    from sea_dist.train.loop import LOSS_TERMS, EpochTimes, Progress

    trainer.cfg.train.patience = patience
    trainer.cfg.train.epochs = len(scores)
    trainer.progress = Progress()
    feed = iter(scores)
    trainer.train_epoch = lambda epoch: (dict.fromkeys(LOSS_TERMS, 0.0), EpochTimes())

    def validate():
        score = next(feed)
        return {"recall@20": score}, {"recall@20": score / 2}, 0.0

    trainer.validate = validate
    trainer.fit()
    return trainer.progress.best_epoch, len(trainer.progress.history)


def test_trainer_fit_follows_mmrecs_rule(tmp_path):
    from sea_dist.config import Config
    from sea_dist.sources.synthetic import SyntheticSpec, write_synthetic
    from sea_dist.runtime.distributed import WorkerContext
    from sea_dist.train.loop import Trainer

    root = write_synthetic(
        SyntheticSpec(n_users=40, n_items=30, n_interactions=400, modalities={"image": 4}, name="es"),
        str(tmp_path / "data"),
    )
    cfg = Config()
    cfg.data.root, cfg.output.output_dir, cfg.train.full_graph = root, str(tmp_path / "out"), True
    cfg.eval.topk = [20]
    trainer = Trainer(cfg, WorkerContext())
    # 0.20004 rounds to the best (0.2): not a new best epoch (an unrounded rule picks epoch 2)
    assert _scripted_fit(trainer, [0.1, 0.2, 0.20004, 0.19, 0.18, 0.17, 0.16], patience=2) == (1, 5)
    # the stop comes when the counter exceeds the patience: epoch 3, after 4 epochs (a
    # `counter >= patience` rule stops after 3)
    assert _scripted_fit(trainer, [0.1, 0.09, 0.08, 0.07, 0.06], patience=2) == (0, 4)


def test_patience_zero_is_a_valid_stopping_step_and_negative_is_not():
    from sea_dist.config import Config
    from sea_dist.config import ConfigError, apply_overrides, validate_config

    validate_config(apply_overrides(Config(), {"train.patience": 0}))  # stop at the first non-improving epoch
    with pytest.raises(ConfigError, match="train.patience"):
        validate_config(apply_overrides(Config(), {"train.patience": -1}))
