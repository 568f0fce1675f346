"""Storage calls that survive a database restart: transient errors retried with a bounded backoff.

A trial writes to its Optuna storage all along (ask, each epoch's report, user attrs, the heartbeat,
tell). A PostgreSQL restart or failover drops every connection for some seconds, and SQLite answers
"database is locked" when a writer holds the file longer than the busy timeout: neither should end a
study. :class:`RetryingRDBStorage` is Optuna's ``RDBStorage`` whose every call is retried on such an
error, waiting 0.5, 1, 2, 4, 8, 8, ... s, for at most ``RETRY_S`` in all (``AUTOLR_STORAGE_RETRY_S``,
default 60). Past that bound the call raises :class:`StorageUnavailable`, one line naming the storage
and the error. A full disk is never transient: it raises :class:`StorageFull` at once, naming the file.

Optuna wraps every SQLAlchemy error of a storage call in ``StorageInternalError`` with a message
about "invalid data ... exceeding max length"; the cause it hides is what these errors name.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

__all__ = ["RETRY_S", "RetryingRDBStorage", "StorageFull", "StorageUnavailable", "call_with_retry", "cause_line", "is_disk_full", "is_transient"]

logger = logging.getLogger(__name__)

RETRY_S = float(os.environ.get("AUTOLR_STORAGE_RETRY_S", "60"))
MAX_WAIT_S = 8.0

# What a dropped, refused or locked connection says (psycopg2, psycopg 3, sqlite3). Other operational
# errors ("no such table", "attempt to write a readonly database") are not retried: they stay.
_TRANSIENT = (
    "database is locked", "database table is locked", "could not connect", "connection refused", "server closed the connection",
    "connection to server", "terminating connection", "connection reset", "connection timed out", "timeout expired",
    "ssl syscall", "eof detected", "broken pipe", "the database system is", "consuming input failed", "connection is closed",
    "connection already closed", "server conn crashed", "no connection to the server", "lost synchronization",
)  # fmt: skip
_DISK_FULL = ("database or disk is full", "no space left on device", "could not extend file", "disk full")


class StorageUnavailable(RuntimeError):
    """The storage kept failing with a transient error for longer than the retry bound."""


class StorageFull(RuntimeError):
    """The storage's disk (or database file) is full: what is finished is stored, nothing more can be."""


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _text(exc: BaseException) -> str:
    return " | ".join(str(e) for e in _chain(exc)).lower()


def is_disk_full(exc: BaseException) -> bool:
    return any(marker in _text(exc) for marker in _DISK_FULL)


def is_transient(exc: BaseException) -> bool:
    """A dropped or refused connection, or a lock held too long: worth trying the call again."""
    import sqlalchemy.exc

    if is_disk_full(exc):
        return False
    for e in _chain(exc):
        if isinstance(e, sqlalchemy.exc.DBAPIError) and e.connection_invalidated:
            return True
        if isinstance(e, sqlalchemy.exc.InterfaceError):
            return True
    return any(marker in _text(exc) for marker in _TRANSIENT)


def cause_line(exc: BaseException) -> str:
    """The innermost error's first line: what the database said, not Optuna's wrapper."""
    inner = list(_chain(exc))[-1]
    first = (str(inner).strip().splitlines() or [""])[0]
    return f"{type(inner).__name__}: {first}"[:300]


def call_with_retry(call: Callable[[], Any], where: str, *, done_already: Callable[[], bool] | None = None) -> Any:
    """``call()``, tried again on transient errors for at most ``RETRY_S``. ``done_already``: asked when
    a retry finds the trial finished (did the first attempt commit before its answer was lost?)."""
    deadline, wait, attempt = time.monotonic() + RETRY_S, 0.5, 0
    while True:
        try:
            return call()
        except (StorageUnavailable, StorageFull):
            raise  # a nested call (a public method calling a private one) already waited
        except UpdateFinishedTrialError:
            if attempt and done_already is not None and done_already():
                return True  # the first attempt committed before its connection dropped
            raise
        except Exception as exc:
            if is_disk_full(exc):
                raise StorageFull(f"the Optuna storage {where} is full ({cause_line(exc)}); free space there, "
                                  "then re-run the same command to resume") from exc  # fmt: skip
            if not is_transient(exc):
                raise
            if time.monotonic() + wait > deadline:
                raise StorageUnavailable(f"the Optuna storage {where} did not answer for {RETRY_S:.0f} s "
                                         f"({cause_line(exc)}); re-run the same command to resume once it is back") from exc  # fmt: skip
            if attempt == 0:
                logger.warning("the Optuna storage %s: %s; retrying for up to %.0f s", where, cause_line(exc), RETRY_S)
            time.sleep(wait)
            wait, attempt = min(2 * wait, MAX_WAIT_S), attempt + 1


def _retried(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(self: RetryingRDBStorage, *args: Any, **kwargs: Any) -> Any:
        done = (lambda: _already(self, *args, **kwargs)) if name == "set_trial_state_values" else None
        return call_with_retry(lambda: method(self, *args, **kwargs), self.where, done_already=done)

    return call


def _already(storage: RetryingRDBStorage, trial_id: int, state: TrialState, values: Any = None, **_: Any) -> bool:
    return storage.get_trial(trial_id).state == state


class RetryingRDBStorage(optuna.storages.RDBStorage):
    """``optuna.storages.RDBStorage`` whose calls are retried on transient errors (see the module), and
    whose per-epoch reports take one statement and whose trial reads skip the ORM where that was verified
    (:mod:`autolr.fast_report`, :mod:`autolr.fast_read`; ``fast_report`` or ``fast_read`` False on an
    instance: Optuna's own)."""

    fast_report: bool = True
    fast_read: bool = True  # trials read in plain statements where verified (:mod:`autolr.fast_read`)
    _fast: Any = None  # the FastReport of this storage's database once looked for (False: none)
    _fast_read: Any = None  # its FastRead, likewise

    def __getstate__(self) -> dict[str, Any]:  # the fast paths hold the engine: a copy looks for its own
        state = super().__getstate__()
        state.pop("_fast", None)
        state.pop("_fast_read", None)
        return state

    def _report(self, trial_id: int, step: int, intermediate_value: float) -> None:
        if self._fast is None:
            from autolr.fast_report import FastReport

            self._fast = FastReport.for_storage(self) or False
        if self.fast_report and self._fast:
            self._fast.write(self, trial_id, step, intermediate_value)
        else:
            optuna.storages.RDBStorage.set_trial_intermediate_value(self, trial_id, step, intermediate_value)

    def _reader(self) -> Any:
        if not self.fast_read:
            return None
        if self._fast_read is None:
            from autolr.fast_read import FastRead

            self._fast_read = FastRead.for_storage(self) or False
        return self._fast_read or None

    def _get_trial(self, trial_id: int) -> FrozenTrial:
        reader = self._reader()
        return reader.trial(trial_id) if reader else optuna.storages.RDBStorage.get_trial(self, trial_id)

    def _get_study_trials(self, study_id: int, states: Any, included_trial_ids: set[int], trial_id_greater_than: int) -> list[FrozenTrial]:
        reader = self._reader()
        if reader:
            return reader.study_trials(study_id, states, included_trial_ids, trial_id_greater_than)
        return optuna.storages.RDBStorage._get_trials(self, study_id, states, included_trial_ids, trial_id_greater_than)

    def count_trials(self, study_id: int) -> dict[TrialState, int]:
        """The study's trials per state from one ``count(*) ... group by state`` (no trial is loaded):
        what a claim reads before every trial, where Optuna's ``get_n_trials`` loads every trial."""
        with self.engine.connect() as conn:
            return {TrialState(state): n for state, n in conn.execute(_count_by_state(), {"study_id": study_id})}

    @property
    def where(self) -> str:
        """The storage without its password, for messages."""
        return self.engine.url.render_as_string(hide_password=True)


@functools.cache
def _count_by_state() -> Any:
    """The statement of :meth:`RetryingRDBStorage.count_trials`, built once (as ``fast_report`` builds its own)."""
    import sqlalchemy as sa
    from optuna.storages._rdb import models

    trials = models.TrialModel.__table__
    return sa.select(trials.c.state, sa.func.count()).where(trials.c.study_id == sa.bindparam("study_id")).group_by(trials.c.state)


# Every call a study makes goes through these: asking (create_new_trial), suggesting, reporting, user
# attrs, the heartbeat, telling, and the reads of pruners, samplers and `show`. All are idempotent but
# create_new_trial: a retry after a commit whose answer was lost leaves one extra RUNNING trial without
# an owner, which ``store.fail_stale_trials`` fails after the grace period.
_CALLS = (
    "create_new_study", "set_study_user_attr", "set_study_system_attr", "get_study_id_from_name", "get_study_name_from_id",
    "get_study_directions", "get_study_user_attrs", "get_study_system_attrs", "get_trial_user_attrs", "get_trial_system_attrs",
    "get_all_studies", "create_new_trial", "set_trial_param", "get_trial_param", "set_trial_state_values",
    "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr", "get_trial_id_from_study_id_trial_number",
    "get_trial", "get_all_trials", "get_best_trial", "record_heartbeat", "_get_stale_trial_ids",
    # what Optuna's cache in front of an RDBStorage calls instead of the public ones
    "_create_new_trial", "_set_trial_param", "_get_trials", "_get_best_trial_id",
)  # fmt: skip
for _name in _CALLS:
    setattr(RetryingRDBStorage, _name, _retried(_name, getattr(optuna.storages.RDBStorage, _name)))
RetryingRDBStorage.set_trial_intermediate_value = _retried("set_trial_intermediate_value", RetryingRDBStorage._report)
RetryingRDBStorage.get_trial = _retried("get_trial", RetryingRDBStorage._get_trial)
RetryingRDBStorage._get_trials = _retried("_get_trials", RetryingRDBStorage._get_study_trials)
RetryingRDBStorage.count_trials = _retried("count_trials", RetryingRDBStorage.count_trials)
