"""Declared hyperparameters: each optimizer and schedule lists its own, with a default and a range.

A study file entry may fix a declared hyperparameter (``momentum: 0.0``), give it a range
(``momentum: {low: 0.5, high: 0.99}``) or a list of choices (``nesterov: [true, false]``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence, Union

__all__ = ["Choice", "Fixed", "ParamSpec", "Range", "Setting", "resolve"]


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
    search: "Range | None" = None
    doc: str = ""


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


Setting = Union[Fixed, Range, Choice]


def resolve(specs: Sequence[ParamSpec], given: Mapping[str, Any] | None, *, owner: str) -> dict[str, Any]:
    """Every declared parameter's value: the given one (cast to its kind) or its default.

    Raises:
        ValueError: ``given`` names a parameter ``owner`` (e.g. ``schedule 'cosine'``) does not declare.
    """
    given = dict(given or {})
    unknown = set(given) - {p.name for p in specs}
    if unknown:
        raise ValueError(f"{owner} has no parameter(s) {sorted(unknown)}; expected {[p.name for p in specs]}")
    return {p.name: p.kind(given.get(p.name, p.default)) for p in specs}
