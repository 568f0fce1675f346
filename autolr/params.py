"""Declared hyperparameters: each optimizer and schedule lists its own, with a default and a range.

A study file entry may fix a declared hyperparameter (``momentum: 0.0``), give it a range
(``momentum: {low: 0.5, high: 0.99}``) or a list of choices (``nesterov: [true, false]``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["FINDER_STEPS", "LR", "MAX_WARMUP", "WARMUP", "Choice", "Fixed", "ParamSpec", "Range", "Setting", "resolve"]


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """A hyperparameter an optimizer or schedule understands.

    ``default`` is used when the study file does not mention it; ``search`` (a Range, or None) is the
    range searched when the study file gives the entry as ``{}`` and ``search_default`` is true.
    """

    name: str
    default: Any
    kind: type  # float, int or bool
    low: float | None = None  # hard bounds of valid values (inclusive)
    high: float | None = None
    search: Range | None = None
    doc: str = ""

    @property
    def expected(self) -> str:
        """What a valid value looks like, in the words every error message uses."""
        if self.kind is bool:
            return "true or false"
        what = "an integer" if self.kind is int else "a number"
        if self.low is not None and self.high is not None:
            return f"{what} in [{self.low:g}, {self.high:g}]"
        if self.low is not None:
            return f"{what} >= {self.low:g}"
        return what

    def valid(self, value: object) -> bool:
        if self.kind is bool:
            return isinstance(value, bool)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if self.kind is int and value != int(value):
            return False
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)

    def check(self, value: object, *, owner: str) -> Any:
        """``value`` as this parameter's kind.

        Raises:
            ValueError: ``value`` is not valid, naming ``owner``, the parameter, what was expected and
                what was given (the same words as a study file's error).
        """
        if not self.valid(value):
            raise ValueError(f"{owner}: {self.name} expected {self.expected}, got {value!r}")
        return self.kind(value)


@dataclasses.dataclass(frozen=True)
class Fixed:
    value: Any


@dataclasses.dataclass(frozen=True)
class Range:
    low: float
    high: float
    log: bool = False
    integer: bool = False


@dataclasses.dataclass(frozen=True)
class Choice:
    values: tuple


Setting = Fixed | Range | Choice


def resolve(specs: Sequence[ParamSpec], given: Mapping[str, Any] | None, *, owner: str) -> dict[str, Any]:
    """Every declared parameter's value: the given one (cast to its kind) or its default.

    Raises:
        ValueError: ``given`` names a parameter ``owner`` (e.g. ``schedule 'cosine'``) does not declare.
    """
    given = dict(given or {})
    unknown = set(given) - {p.name for p in specs}
    if unknown:
        raise ValueError(f"{owner} has no parameter(s) {sorted(unknown)}; expected {[p.name for p in specs]}")
    return {p.name: p.check(given.get(p.name, p.default), owner=owner) for p in specs}


# The parameters every run has, whatever its optimizer and schedule: declared once, checked at every
# entry (the study file, RunConfig, load_best, StepScheduler) with the same bounds and words.
MAX_WARMUP = 0.9  # past 90% of the run in warmup, no schedule is left to search
LR = ParamSpec("lr", None, float, 1e-12, 1e6, doc="peak learning rate (beyond 1e6, updates overflow float32)")
WARMUP = ParamSpec("warmup", 0.0, float, 0.0, MAX_WARMUP, doc="fraction of all steps in linear warmup")
# The LR range test's budget in optimizer steps: 30 affords the descent and a bisection.
FINDER_STEPS = ParamSpec("steps", 100, int, 30, doc="the most optimizer steps the range test's probes take together")
