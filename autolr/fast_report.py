"""A trial's per-epoch value (``trial.report``) written in one statement instead of Optuna's ORM round trips.

Why: every epoch of every trial reports its value to the storage. Optuna's ``RDBStorage`` loads the
trial through its ORM, looks the step up, adds the row and commits: 23-33 ms of a 20-epoch trial on
SQLite and ~70-78 ms on PostgreSQL here (``bench/optuna_calls.py``). This reads the trial's state and
upserts the ``(trial_id, step)`` row with the table definitions of the installed Optuna, in one
transaction (3-5 ms and 27-31 ms a trial): the same rows, the same errors (``KeyError`` for an unknown
trial, ``UpdateFinishedTrialError`` for a finished one), the trial's row locked on PostgreSQL as
Optuna locks it. It writes into Optuna's own schema, so it is used only with the Optuna versions it
was compared against row for row (``tests/test_fast_report.py``); with any other version, or a
database other than SQLite and PostgreSQL, reports go through Optuna's ``RDBStorage``.
"""

from __future__ import annotations

import logging
from typing import TypeVar

import optuna
import sqlalchemy as sa
from optuna.trial import TrialState

__all__ = ["VERIFIED_OPTUNA", "FastReport", "fast_path", "verified"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

VERIFIED_OPTUNA = ("5.1",)  # major.minor of the Optuna versions whose rows were compared


def verified(optuna_version: str) -> bool:
    return ".".join(optuna_version.split(".")[:2]) in VERIFIED_OPTUNA


def fast_path(cls: type[T], storage: optuna.storages.RDBStorage, what: str) -> T | None:
    """``cls(storage.engine)`` (a path into Optuna's own schema) where the installed Optuna and the
    database are ones it was verified on, else None (logged at debug): ``what`` then goes through
    Optuna's ``RDBStorage``."""
    if not verified(optuna.__version__):
        logger.debug("Optuna %s: fast %s are verified on %s only; going through Optuna", optuna.__version__, what, VERIFIED_OPTUNA)
        return None
    if storage.engine.dialect.name not in ("sqlite", "postgresql"):
        return None
    try:
        return cls(storage.engine)
    except (ImportError, AttributeError) as exc:  # Optuna's models moved
        logger.debug("no fast %s (%s); going through Optuna", what, exc)
        return None


class FastReport:
    """Writes one intermediate value of a RUNNING trial; see the module."""

    def __init__(self, engine: sa.engine.Engine) -> None:
        from optuna.storages._rdb import models

        self.engine = engine
        self._stored_repr = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr
        trials, values = models.TrialModel.__table__, models.TrialIntermediateValueModel.__table__
        self.state = sa.select(trials.c.state).where(trials.c.trial_id == sa.bindparam("trial_id"))
        if engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert

            self.state = self.state.with_for_update()  # as Optuna's find_or_raise_by_id(for_update=True)
        else:
            from sqlalchemy.dialects.sqlite import insert
        columns = {c: sa.bindparam(c) for c in ("trial_id", "step", "intermediate_value", "intermediate_value_type")}
        upsert = insert(values).values(**columns)
        self.upsert = upsert.on_conflict_do_update(
            index_elements=["trial_id", "step"],
            set_={c: upsert.excluded[c] for c in ("intermediate_value", "intermediate_value_type")},
        )  # built once: SQLAlchemy reuses their compiled form

    @classmethod
    def for_storage(cls, storage: optuna.storages.RDBStorage) -> FastReport | None:
        """The fast report of ``storage``'s database, or None (logged at debug) when it cannot take it."""
        return fast_path(cls, storage, "reports")

    def write(self, storage: optuna.storages.RDBStorage, trial_id: int, step: int, value: float) -> None:
        stored, kind = self._stored_repr(value)
        with self.engine.begin() as conn:
            state = conn.execute(self.state, {"trial_id": trial_id}).scalar_one_or_none()
            if state is None:
                raise KeyError(f"No trial with trial id {trial_id} exists.")  # Optuna's words
            storage.check_trial_is_updatable(trial_id, TrialState(state))
            conn.execute(self.upsert, {"trial_id": trial_id, "step": step, "intermediate_value": stored, "intermediate_value_type": kind})
