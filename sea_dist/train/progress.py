"""Progress lines inside an epoch: a catalog epoch runs for tens of minutes between epoch logs.

Time-based rather than every N steps, because step cost differs by orders of magnitude between
a laptop test and a catalog run; the first line comes after the first interval, so short runs
stay quiet. Logged on one rank only (the launcher passes ``every_s=0`` to the others).
"""
from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)


def format_duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.1f}min"
    return f"{seconds / 3600:.1f}h"


class StepProgress:
    """``epoch E: step S/N (P%), X s/step, ETA T, mean loss L`` at most every ``every_s``."""

    def __init__(self, epoch: int, first_step: int, steps: int, every_s: float, clock=time.monotonic):
        self.epoch, self.first_step, self.steps, self.every_s = epoch, first_step, steps, every_s
        self.clock = clock
        self.started = self.last = clock()
        self.lines: list[str] = []  # what was logged (tests read it)

    def step_done(self, step: int, mean_loss: float | None = None) -> str | None:
        if self.every_s <= 0:
            return None
        now = self.clock()
        if now - self.last < self.every_s:
            return None
        self.last = now
        done = step + 1
        per_step = (now - self.started) / max(done - self.first_step, 1)
        line = (
            f"epoch {self.epoch}: step {done}/{self.steps} ({100.0 * done / max(self.steps, 1):.0f}%), "
            f"{per_step:.2f} s/step, ETA {format_duration(per_step * (self.steps - done))}"
        )
        if mean_loss is not None:
            line += f", mean loss {mean_loss:.4f}"
        log.info(line)
        self.lines.append(line)
        return line
