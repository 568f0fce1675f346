"""Errors a user can cause. Each one says where, what was expected, what was given."""

from __future__ import annotations

__all__ = ["InputError", "LoopContractError", "StudyFileError", "TrackingUnavailableError"]


class StudyFileError(ValueError):
    """A study file (or a flag that overrides one of its keys) is not valid.

    The message is one line: ``FILE: KEY: expected EXPECTED, got GIVEN``.
    """

    def __init__(self, path: str, key: str, expected: str, given: object) -> None:
        self.path = str(path)
        self.key = key
        self.expected = expected
        self.given = given
        given_text = given if isinstance(given, str) and given.startswith("<") else _as_written(given)
        super().__init__(f"{self.path}: {key}: expected {expected}, got {given_text}")


def _as_written(value: object) -> str:
    """A value as the study file spelt it: YAML's ``true``, ``false`` and ``null``, not Python's."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return repr(value)


class LoopContractError(StudyFileError):
    """A ``loop:`` returned what is not a trial's value (None without ``trial.epoch``, a dict without
    the objective's metric, a string). Before any trial of the study completed, every trial would
    break it the same way, and the study stops in one line; after one did, it is that trial's FAIL."""


class InputError(ValueError):
    """A flag or argument that cannot work: a storage URL no driver takes, a study that is not in the
    storage named. One line, saying what to do instead."""


class TrackingUnavailableError(RuntimeError):
    """The MLflow tracking server named by the user cannot be reached."""
