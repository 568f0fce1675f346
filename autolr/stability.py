"""What a finished trial says about stability: one rule, read by the sampler's ceiling, the parent run's
description, the frontier plot, ``autolr find-lr`` and ``autolr compare`` alike.

A trial is *stable* at its learning rate when it finished (COMPLETE, or PRUNED for its curve), did not
diverge, and ended with a lower training loss than it started with (``loss_ratio`` <= 1, where known):
a run whose loss ended above its start was not trained by that rate, whatever the guard said. Its rate
is the searched ``lr``, the schedule's peak: a trial with warmup counts at the rate it warmed up to.

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
FROM_RANGE_TEST = "the range test"


@dataclasses.dataclass(frozen=True)
class Limit:
    """A stability limit and what it rests on (``source``: "the range test" or "N stable trials")."""

    lr: float
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"max_stable_lr": self.lr, "from": self.source}


def is_stable(state: str, *, diverged: bool, loss_ratio: float | None) -> bool:
    """Whether a finished trial in ``state`` counts as stable at its learning rate."""
    return state in FINISHED_STATES and not diverged and not (loss_ratio is not None and loss_ratio > 1.0)


def max_stable_lr(trials: Iterable[tuple[float, bool]]) -> float | None:
    """The highest rate among ``(lr, stable)`` pairs that is stable, or None."""
    stable = [lr for lr, ok in trials if ok]
    return max(stable) if stable else None


def row_is_stable(row: Mapping[str, Any]) -> bool:
    """:func:`is_stable` of a trial row (``autolr.store.trial_row``)."""
    return is_stable(row["state"], diverged=bool(row.get("diverged")), loss_ratio=row.get("loss_ratio"))


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
