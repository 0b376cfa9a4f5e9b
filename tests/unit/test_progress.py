"""Step progress lines: rate, ETA and the interval, on a fake clock."""
from __future__ import annotations

from sea_dist.train.progress import StepProgress, format_duration


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lines_every_interval_with_rate_and_eta():
    clock = FakeClock()
    p = StepProgress(epoch=2, first_step=0, steps=100, every_s=60, clock=clock)
    clock.now += 30
    assert p.step_done(2, 0.5) is None  # before the first interval
    clock.now += 30  # 60 s for 4 steps
    assert p.step_done(3, 0.25) == "epoch 2: step 4/100 (4%), 15.00 s/step, ETA 24.0min, mean loss 0.2500"
    clock.now += 10
    assert p.step_done(4) is None  # 10 s since the last line
    assert len(p.lines) == 1


def test_resumed_epoch_rates_only_the_steps_run_here_and_off_means_silent():
    clock = FakeClock()
    p = StepProgress(epoch=0, first_step=50, steps=60, every_s=1, clock=clock)
    clock.now += 20  # steps 50..54 in 20 s
    assert p.step_done(54) == "epoch 0: step 55/60 (92%), 4.00 s/step, ETA 20s"
    quiet = StepProgress(epoch=0, first_step=0, steps=10, every_s=0, clock=clock)
    clock.now += 1000
    assert quiet.step_done(5, 1.0) is None


def test_format_duration():
    assert [format_duration(s) for s in (-1, 5, 89, 90, 5399, 5400, 36000)] == [
        "0s", "5s", "89s", "1.5min", "90.0min", "1.5h", "10.0h"
    ]
