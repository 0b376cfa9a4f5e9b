"""MMRec's early-stopping rule, exactly, as a pure function of one epoch's validation score.

Why a module of its own: the rule decides the best epoch (whose test metrics are reported) and
the stopping epoch, so it must match the trainer that produced the published SEA numbers, and
it must be testable on scripted score sequences without training anything.

MMRec's rule (``utils.early_stopping`` and ``TopKEvaluator.evaluate`` in the authors' code):

- The validation metric is rounded to 4 decimals before it is compared. MMRec's metrics are
  numpy float64 values, and ``round()`` on them is numpy's rounding (scale by 10^4, round half
  to even, scale back), which differs from Python's correctly rounded ``round`` on floats at
  exact-looking halves: 0.12345 becomes 0.1234 here, 0.1235 with Python's rule.
- An epoch *improves* when its rounded score is strictly greater than the best so far; the
  counter then resets to 0 and the best becomes this rounded score. A tie (after rounding)
  does not improve.
- Otherwise the counter increments, and training stops when the counter *exceeds*
  ``stopping_step``: with ``stopping_step`` 20 the run trains 21 epochs without improvement
  after its best, then stops (one epoch more than a ``counter >= patience`` rule).
- The best starts at -1 in MMRec; every rounded metric is >= 0, so the first epoch always
  improves (a starting best of -inf, as a fresh :class:`~sea_dist.train.loop.Progress` holds,
  decides the same).

Only bigger-is-better metrics exist here (Recall, NDCG, Precision, MAP), so MMRec's
``valid_metric_bigger=False`` branch is not carried over.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DECIMALS = 4


def mmrec_round(score: float) -> float:
    """The score as MMRec compares it: numpy's rounding to 4 decimals."""
    return float(np.round(np.float64(score), DECIMALS))


def should_stop(counter: int, stopping_step: int) -> bool:
    """True once more than ``stopping_step`` consecutive epochs have not improved."""
    return counter > stopping_step


@dataclass(frozen=True)
class Verdict:
    """The rule's state after one epoch, and what it decided."""

    best: float  # best rounded score so far (this epoch's rounded score when it improved)
    counter: int  # consecutive epochs without a strictly better rounded score
    improved: bool  # this epoch is the new best epoch
    stop: bool  # stop training after this epoch


def early_stopping(score: float, best: float, counter: int, stopping_step: int) -> Verdict:
    """One epoch of MMRec's rule: ``best`` and ``counter`` are the state before the epoch
    (start with ``best=-1`` or ``-inf`` and ``counter=0``); ``score`` is unrounded."""
    rounded = mmrec_round(score)
    if rounded > best:
        return Verdict(best=rounded, counter=0, improved=True, stop=False)
    counter += 1
    return Verdict(best=best, counter=counter, improved=False, stop=should_stop(counter, stopping_step))
