"""What a finished trial says about stability: one rule, read by the sampler's ceiling, the parent run's
description, the frontier plot, ``autolr find-lr`` and ``autolr compare`` alike.

A trial is *stable* at its learning rate when it finished (COMPLETE, or PRUNED for its curve), did not
diverge, and kept what it learnt (the ratios of its smoothed training loss to the loss it started at,
where known):

- it ended below its start (``loss_ratio`` <= 1): a run whose loss ended above its start was not
  trained by that rate, whatever the guard said;
- and, where an epoch's mean loss got at least :data:`REAL_PROGRESS` below its start
  (``low_loss_ratio``, the lowest epoch mean), it did not give back more than :data:`GIVEN_BACK` of
  that progress by its end: a run that learnt, spiked and sat near its start (at chance, for a
  classifier) for the rest of its budget neither diverged by the guard's rules nor ended above its
  start, and was still not trained by that rate. The low point is an epoch's mean, not the low of a
  short average, whose noise alone dips far enough below the trend that a run with modest progress
  would read as giving it back; the end's own noise (an average of about 10 steps) is a small share
  of a progress of 20% or more, a schedule's restart gives back some of it for a while, and neither
  comes near half.

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
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["FROM_RANGE_TEST", "Limit", "is_stable", "max_stable_lr", "row_is_stable", "study_limit", "study_limits"]

FINISHED_STATES = ("COMPLETE", "PRUNED")
REAL_PROGRESS = 0.2  # a run whose lowest loss was 20% or more below its start had learnt something it can give back
GIVEN_BACK = 0.5  # ending above the lowest loss by more than half of the progress to it: the progress is lost
FROM_RANGE_TEST = "the range test"


@dataclasses.dataclass(frozen=True)
class Limit:
    """A stability limit and what it rests on (``source``: "the range test" or "N stable trials")."""

    lr: float
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"max_stable_lr": self.lr, "from": self.source}


def is_stable(state: str, *, diverged: bool, loss_ratio: float | None, low_loss_ratio: float | None = None) -> bool:
    """Whether a finished trial in ``state`` counts as stable at its learning rate (the module's rule)."""
    return state in FINISHED_STATES and not diverged and not (loss_ratio is not None and _lost(loss_ratio, low_loss_ratio))


def _lost(loss_ratio: float, low_loss_ratio: float | None) -> bool:
    """The training loss ended above its start, or gave back most of a real progress."""
    if loss_ratio > 1.0:
        return True
    progress = 1.0 - low_loss_ratio if low_loss_ratio is not None else 0.0
    return progress >= REAL_PROGRESS and loss_ratio - low_loss_ratio > GIVEN_BACK * progress


def max_stable_lr(trials: Iterable[tuple[float, bool]]) -> float | None:
    """The highest rate among ``(lr, stable)`` pairs that is stable, or None."""
    stable = [lr for lr, ok in trials if ok]
    return max(stable) if stable else None


def row_is_stable(row: Mapping[str, Any]) -> bool:
    """:func:`is_stable` of a trial row (``autolr.store.trial_row``)."""
    return is_stable(row["state"], diverged=bool(row.get("diverged")), loss_ratio=row.get("loss_ratio"), low_loss_ratio=row.get("low_loss_ratio"))


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
