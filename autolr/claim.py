"""Claiming the next trial of a study: counting and asking under one lock, so the target is met exactly.

``trials`` is a target of finished trials shared by every process on the study (``--jobs``, several
invocations, several machines). A process may start a trial only while the finished trials plus those
running in live processes fall short of it. Counting and then asking are two storage calls: two
processes that count at the same moment would both ask, and the study would end one trial over. So
both happen under a lock per study, held for the few milliseconds between them:

- SQLite: a file lock beside the database (``<file>.claim.lock``; ``flock``, released if the process dies);
- PostgreSQL: a session advisory lock (``pg_advisory_lock``) on a key derived from the study's name,
  released by the server when the process's connection closes, however it ends.

Other databases get no lock: there two processes may still overshoot the target by one. Optuna can
neither delete a trial nor take one back once asked, which is why the count and the ask must not be
separated, rather than a surplus trial being undone afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
import zlib
from collections.abc import Iterator
from typing import Any

import optuna
from optuna.trial import TrialState

from autolr import keys, owner, sqlite, store
from autolr.retry import call_with_retry

__all__ = ["ClaimLock", "ask_owned", "claim", "free_slot", "n_claimed", "start_owned", "take_slot"]

logger = logging.getLogger(__name__)

LOCK_TIMEOUT_S = 300


class ClaimLock:
    """The inter-process lock of one study's claims (see the module); ``close()`` when done."""

    def __init__(self, url: str, study_name: str) -> None:
        self.url, self._file, self._engine = url, None, None
        path = sqlite.sqlite_path(url)
        if path is not None:
            import filelock

            self._file = filelock.FileLock(f"{path}.claim.lock", timeout=LOCK_TIMEOUT_S)
        elif url.startswith(("postgresql", "postgres")):
            import sqlalchemy

            self._engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
            self._key = zlib.crc32(f"autolr:{study_name}".encode()) - 2**31  # a signed 32-bit key

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        if self._file is not None:
            with self._file:
                yield
        elif self._engine is not None:
            with self._advisory():
                yield
        else:
            yield

    @contextlib.contextmanager
    def _advisory(self) -> Iterator[None]:
        import sqlalchemy

        conn = call_with_retry(self._locked_connection, self.url)
        try:
            yield
        finally:
            with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):  # a dropped connection released it already
                conn.execute(sqlalchemy.text("select pg_advisory_unlock(1634104684, :k)"), {"k": self._key})
            with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):
                conn.close()

    def _locked_connection(self):
        import sqlalchemy

        conn = self._engine.connect()
        try:
            conn.execute(sqlalchemy.text("select pg_advisory_lock(1634104684, :k)"), {"k": self._key})  # 1634104684: "autl"
        except BaseException:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


def n_claimed(study: optuna.Study, target: int) -> int:
    """Finished trials plus those running in live processes, from one read of the study: running
    trials whose process is gone are failed first (their configuration queued again while fewer than
    ``target`` are finished); with none running, nothing else is read. Where the database counts the
    trials (autolr's RDB storages), a count comes first and the trials are loaded only if some run."""
    counts = store.count_by_state(study)
    if counts is not None and not counts.get(TrialState.RUNNING):
        return sum(counts.get(s, 0) for s in store.FINISHED)
    trials = study.get_trials(deepcopy=False, states=(*store.FINISHED, TrialState.RUNNING))
    running = [t for t in trials if t.state == TrialState.RUNNING]
    if not running:
        return len(trials)
    failed = store.fail_stale_trials(study, retry=len(trials) - len(running) < target, running=running)
    return len(trials) - len(failed)


def claim(study: optuna.Study, lock: ClaimLock, target: int) -> optuna.Trial | None:
    """A new trial of this process (a killed trial's configuration first, where one waits), or None
    when the finished and running trials already make ``target``."""
    with lock.held():
        if n_claimed(study, target) >= target:
            return None
        return ask_owned(study)


def take_slot(study: optuna.Study, url: str) -> int:
    """This invocation's slot among those running the study now: the lowest one free, 0 when it runs
    alone (its samplers then draw what a lone invocation always drew). Two machines that start the
    same study file at the same moment both read 0 trials; their slots, taken under the claim lock,
    seed them apart. The slots live in the study (``autolr.invocations``: slot -> owner record); a
    slot whose process of this machine is gone is free again, one of another machine stays taken
    until that machine's next invocation frees it (a later invocation then only draws differently).
    On a database without a claim lock two invocations may still take the same slot."""
    with _slots(study, url) as held:
        live = {int(k): v for k, v in held.items() if not owner.is_dead(v)}
        slot = min(set(range(len(live) + 1)) - set(live))
        study.set_user_attr(keys.INVOCATIONS, {str(k): v for k, v in sorted({**live, slot: owner.this_process()}.items())})
    return slot


def free_slot(study: optuna.Study, url: str, slot: int) -> None:
    """Give back :func:`take_slot`'s ``slot`` at the invocation's end (best effort: a slot left taken
    by this machine is freed by the next invocation that finds its process gone)."""
    try:
        with _slots(study, url) as held:
            if held.get(str(slot)) == owner.this_process():
                study.set_user_attr(keys.INVOCATIONS, {k: v for k, v in held.items() if k != str(slot)})
    except Exception:  # noqa: BLE001 - the study's trials are safe; only a later invocation's seed moves
        logger.debug("could not free invocation slot %d of study %s", slot, study.study_name, exc_info=True)


@contextlib.contextmanager
def _slots(study: optuna.Study, url: str) -> Iterator[dict[str, Any]]:
    """The stored slots (slot -> owner record), read and rewritten under the study's claim lock."""
    lock = ClaimLock(url, study.study_name)
    try:
        with lock.held():
            held = study._storage.get_study_user_attrs(study._study_id).get(keys.INVOCATIONS)
            yield held if isinstance(held, dict) else {}
    finally:
        lock.close()


def start_owned(study: optuna.Study, params: dict[str, Any], user_attrs: dict[str, Any]) -> optuna.Trial:
    """A new trial of this process that runs ``params`` (suggested as an enqueued trial's are), made
    RUNNING with its owner in one write. ``enqueue_trial`` and then ``ask`` take three (insert, read
    the queue, update), and another process asking in between could take the queued configuration."""
    template = optuna.trial.create_trial(state=TrialState.RUNNING, system_attrs={"fixed_params": params},
                                         user_attrs={**user_attrs, keys.OWNER: owner.this_process()})  # fmt: skip
    study._thread_local.cached_all_trials = None  # as Study.ask: a sampler reading the study sees it afresh
    return optuna.Trial(study, study._storage.create_new_trial(study._study_id, template_trial=template))


def ask_owned(study: optuna.Study) -> optuna.Trial:
    """A new trial (a waiting one first) recording this process as its owner."""
    with warnings.catch_warnings():  # Optuna warns that heartbeats are meant for optimize(); autolr beats itself
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        trial = study.ask()
    try:
        trial.set_user_attr(keys.OWNER, owner.this_process())
    except BaseException:  # Ctrl-C or SIGTERM right after the ask: the trial is not left RUNNING
        with contextlib.suppress(Exception):
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        raise
    return trial
