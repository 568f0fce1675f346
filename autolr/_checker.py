"""The checks every study-file key goes through: each failure is one :class:`StudyFileError` naming the
file, the key, what was expected and what was given."""

from __future__ import annotations

import math
from typing import Any

from autolr.errors import StudyFileError
from autolr.params import ParamSpec

__all__ = ["TOP", "Checker"]

TOP = "(top level)"


class Checker:
    """Validates one study file, remembering its path for every error."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, key: str, expected: str, given: object) -> StudyFileError:
        return StudyFileError(self.path, key, expected, given)

    def mapping(self, value: object, key: str, allowed: set[str] | None = None) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(key, "a mapping", value)
        for k in value:
            if not isinstance(k, str):
                raise self.fail(key, "string keys", k)
            if allowed is not None and k not in allowed:
                where = k if key == TOP else f"{key}.{k}"
                raise self.fail(where, f"one of the keys {sorted(allowed)}", f"<unknown key {k!r}>")
        return value

    def integer(self, value: object, key: str, *, minimum: int, maximum: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (maximum is not None and value > maximum):
            raise self.fail(key, f"an integer >= {minimum}" if maximum is None else f"an integer in [{minimum}, {maximum}]", value)
        return value

    def number(self, value: object, key: str, *, low: float | None = None, high: float | None = None) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.fail(key, "a finite number", value)
        if (low is not None and value < low) or (high is not None and value > high):
            raise self.fail(key, f"a number in [{low}, {high}]", value)
        return float(value)

    def param(self, value: object, key: str, spec: ParamSpec) -> Any:
        """A declared hyperparameter's value, checked with the words every other entry uses."""
        if not spec.valid(value):
            raise self.fail(key, spec.expected, value)
        return spec.kind(value)

    def choice(self, value: object, key: str, options: tuple[str, ...]) -> str:
        if value not in options:
            raise self.fail(key, f"one of {list(options)}", value)
        return value

    def string(self, value: object, key: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, "a non-empty string", value)
        return value

    def flag(self, value: object, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, "true or false", value)
        return value
