"""What a finished trial says about stability: one rule, read by the sampler's ceiling, the parent run's
description, the frontier plot, ``autolr find-lr`` and ``autolr compare`` alike.

A trial is *stable* at its learning rate when it finished (COMPLETE, or PRUNED for its curve), did not
diverge, and kept what it learnt (its training loss against the loss it started at, the mean of its
first window, where known):

- it ended below its start (``loss_ratio``, a smoothed end, <= 1): a run whose loss ended above its
  start was not trained by that rate, whatever the guard said;
- and, where an epoch's mean loss got at least :data:`REAL_PROGRESS` below its start, its last epoch's
  mean did not give back more than :data:`GIVEN_BACK` of that progress: a run that learnt, spiked and
  sat near its start (at chance, for a classifier) for the rest of its budget neither diverged by the
  guard's rules nor ended above its start, and was still not trained by that rate.

The second clause compares epoch means with epoch means (:class:`EpochLosses`; short epochs are
read together, in blocks of at least :data:`MIN_BLOCK_STEPS` steps), each read in the run's favour by
at least :data:`NOISE_SE` of its standard errors: the lowest block mean high (``low_loss_ratio``), the
last one low (``last_loss_ratio``). So noise alone (small batches, short epochs) does not read as
giving progress back. A trial pruned for its curve is read at the epoch it was stopped at: a run whose
last epoch gave back more than half of its progress was not trained by its rate, whether or not it
could have recovered. (A first version compared the smoothed end with the lowest epoch mean: on a
2-epoch study of 2-3 steps an epoch the smoothed end still carried the start, and every trial read
unstable.)

Its rate is the searched ``lr``, the schedule's peak: a trial with warmup counts at the rate it warmed
up to.

A study's *stability limit* (per optimizer) is, in this order of preference:

1. the range test's ``max_stable_lr`` when the study's storage holds one (``lr: auto`` caches it): the
   largest constant rate that stays stable over a run of the study's length, measured directly;
2. else the highest rate among the study's stable trials ("from N stable trials");
3. else (``find-lr`` only, which can measure) the range test just run.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from autolr import keys

__all__ = ["FROM_RANGE_TEST", "RATIO_ATTRS", "EpochLosses", "Limit", "is_stable", "max_stable_lr", "ratios", "row_is_stable", "study_limit", "study_limits"]

FINISHED_STATES = ("COMPLETE", "PRUNED")
REAL_PROGRESS = 0.2  # a run whose lowest epoch mean was 20% or more below its start had learnt something it can give back
GIVEN_BACK = 0.5  # a last epoch above the lowest by more than half of the progress to it: the progress is lost
NOISE_SE = 2.0  # each block mean is read at least this many standard errors in the run's favour
MIN_BLOCK_STEPS = 16  # a mean of fewer finite training losses (and its standard error) is too noisy to read
FROM_RANGE_TEST = "the range test"


@dataclasses.dataclass(frozen=True)
class Limit:
    """A stability limit and what it rests on (``source``: "the range test" or "N stable trials")."""

    lr: float
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"max_stable_lr": self.lr, "from": self.source}


def is_stable(state: str, *, diverged: bool, loss_ratio: float | None, low_loss_ratio: float | None = None, last_loss_ratio: float | None = None) -> bool:
    """Whether a finished trial in ``state`` counts as stable at its learning rate (the module's rule)."""
    return state in FINISHED_STATES and not diverged and not (loss_ratio is not None and _lost(loss_ratio, low_loss_ratio, last_loss_ratio))


RATIO_ATTRS = {
    "loss_ratio": keys.LOSS_RATIO,
    "low_loss_ratio": keys.LOW_LOSS_RATIO,
    "last_loss_ratio": keys.LAST_LOSS_RATIO,
}  # is_stable's keyword -> user attr


def ratios(user_attrs: Mapping[str, Any]) -> dict[str, float | None]:
    """The keyword arguments of :func:`is_stable` from a trial's user attrs (a trial row's keys too)."""
    return {name: user_attrs.get(attr) for name, attr in RATIO_ATTRS.items()}


def _lost(loss_ratio: float, low_loss_ratio: float | None, last_loss_ratio: float | None) -> bool:
    """The training loss ended above its start, or its last epoch gave back most of a real progress."""
    if loss_ratio > 1.0:
        return True
    if low_loss_ratio is None or last_loss_ratio is None:
        return False
    progress = 1.0 - low_loss_ratio
    return progress >= REAL_PROGRESS and last_loss_ratio - low_loss_ratio > GIVEN_BACK * progress


class EpochLosses:
    """The training loss's epoch means as the rule's second clause reads them: ``low``, the lowest
    block mean plus its noise, and ``last``, the last block's mean less its noise (None until a block
    ended). A block is an epoch, or consecutive epochs together until they hold :data:`MIN_BLOCK_STEPS`
    finite losses (a loop that validates every few steps ends an "epoch" each time); a trailing block
    shorter than that is not read, and ``last`` stays the block before it. The noise is
    ``z`` standard errors, each block's losses' spread (a trend within it included, which only widens
    it) over the square root of their count, with ``z`` at least :data:`NOISE_SE` and growing with the
    number of blocks as the expected largest of that many normal deviates, ``sqrt(2 ln n)``: the
    lowest of many noisy means lies further below the trend."""

    def __init__(self) -> None:
        self.low: float | None = None
        self.last: float | None = None
        self._blocks: list[tuple[float, float]] = []  # (mean, standard error) of each block read
        self._count, self._mean, self._m2 = 0, 0.0, 0.0  # this block's losses (Welford: O(1) memory, no overflow error)

    def add(self, losses: Sequence[float]) -> None:
        """This epoch's finite training losses, as they arrive."""
        for v in losses:
            self._count += 1
            d = v - self._mean
            self._mean += d / self._count
            self._m2 += d * (v - self._mean)

    def end_epoch(self) -> None:
        n, mean = self._count, self._mean
        if n < MIN_BLOCK_STEPS:
            return  # the next epoch's losses join this block
        var = self._m2 / (n - 1)
        self._count, self._mean, self._m2 = 0, 0.0, 0.0
        if not math.isfinite(mean):
            return  # losses beyond a float's range: the first clause and the guard speak for such a run
        self._blocks.append((mean, math.sqrt(var / n) if math.isfinite(var) and var >= 0 else math.inf))
        z = max(NOISE_SE, math.sqrt(2 * math.log(len(self._blocks))))
        self.low = min(m + z * se for m, se in self._blocks)
        mean, se = self._blocks[-1]
        self.last = mean - z * se


def max_stable_lr(trials: Iterable[tuple[float, bool]]) -> float | None:
    """The highest rate among ``(lr, stable)`` pairs that is stable, or None."""
    stable = [lr for lr, ok in trials if ok]
    return max(stable) if stable else None


def row_is_stable(row: Mapping[str, Any]) -> bool:
    """:func:`is_stable` of a trial row (``autolr.store.trial_row``)."""
    return is_stable(row["state"], diverged=bool(row.get("diverged")), **{name: row.get(name) for name in RATIO_ATTRS})


def study_limit(rows: Iterable[Mapping[str, Any]], range_test_lr: float | None = None) -> Limit | None:
    """The stability limit of one optimizer's trial rows, or of its cached range test (preferred)."""
    if range_test_lr is not None:
        return Limit(range_test_lr, FROM_RANGE_TEST)
    stable = [r["lr"] for r in rows if r.get("lr") is not None and row_is_stable(r)]
    if not stable:
        return None
    return Limit(max(stable), f"{len(stable)} stable trial{'s' if len(stable) != 1 else ''}")


def study_limits(rows: Sequence[Mapping[str, Any]], range_tests: Mapping[str, float] | None = None) -> dict[str, Limit]:
    """Optimizer -> the study's stability limit (:func:`study_limit`), for each optimizer that has one;
    ``range_tests``: optimizer -> its cached range test's ``max_stable_lr``."""
    range_tests = range_tests or {}
    names = sorted({str(r.get("optimizer")) for r in rows if r.get("optimizer")} | set(range_tests))
    found = {name: study_limit([r for r in rows if str(r.get("optimizer")) == name], range_tests.get(name)) for name in names}
    return {name: limit for name, limit in found.items() if limit is not None}
