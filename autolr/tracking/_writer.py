"""The writer: applies the training process's messages to the MLflow store, in order.

It owns all SQL work of trial runs (see ``autolr/tracking/__init__.py`` for why it is a process of its
own). Points are committed as soon as nothing more is waiting in the inbox, everything that arrived
together in one transaction: the training process already sends them in batches (``FLUSH_INTERVAL_S``),
so a delay here only left more to write after a trial's end (measured: with 50 ms here, a 20-epoch
digits trial's end waited ~2.5 ms for ~300 points; committed on arrival, they are in while the last
epoch trains). While the store does not answer, what cannot be written is held per run, in order,
retried every ``RETRY_S`` and at every barrier, and kept in the spool at exit (``_spool.py``).

The writer process (``_writer_process.py``) runs :func:`serve`; a writer thread (``_links.ThreadLink``)
does too. It imports mlflow and no torch (``autolr`` and ``autolr.tracking`` load their names lazily).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from mlflow.entities import Metric, Param, RunTag

from autolr import keys
from autolr.monitor import GradientMonitor
from autolr.tracking._errors import describe, disk_full, unreachable
from autolr.tracking._messages import (
    Barrier,
    BarrierDone,
    Committed,
    CreateRun,
    EndRun,
    FromWriter,
    LogPoints,
    PointsUnsent,
    PointsWritten,
    Progress,
    RunBatch,
    RunClosed,
    RunCreated,
    RunEnd,
    SetTags,
    StepSeries,
    StoreDown,
    StoreUp,
    TerminateRun,
    ToWriter,
    TrialState,
    WriterExited,
)
from autolr.tracking._spool import Spool
from autolr.tracking._store import open_client

__all__ = ["BATCH_LIMIT", "RETRY_S", "STOP", "TAG_LIMIT", "Writer", "serve"]

logger = logging.getLogger(__name__)

BATCH_LIMIT = 1000  # MLflow's log_batch accepts at most 1000 entities (metrics + params + tags) a call
TAG_LIMIT = 100  # ... and at most 100 params and 100 tags
CHUNK_POINTS = 50_000  # held points written this many a transaction
RETRY_S = 10.0  # while the store does not answer, the writer holds what it gets and tries again this often
TAG_VALUE_LIMIT = 8000  # characters MLflow keeps of a tag value

Reply = Callable[[FromWriter], None]


@dataclasses.dataclass
class _OpenRun:
    run_id: str | None
    new_run: CreateRun | None = None  # a creation not written yet (fast path: it goes with the first points)
    monitor: GradientMonitor = dataclasses.field(default_factory=GradientMonitor)
    points: list = dataclasses.field(default_factory=list)
    tags: dict[str, str] = dataclasses.field(default_factory=dict)

    def take(self, end: RunEnd | None = None) -> RunBatch:
        """What is pending, as one batch; the run keeps nothing of it."""
        tags = {k: v[:TAG_VALUE_LIMIT] for k, v in self.tags.items()}
        batch = RunBatch(self.run_id, new_run=self.new_run, points=self.points, tags=tags, end=end)
        self.points, self.tags, self.new_run = [], {}, None
        return batch


class Writer:
    """Applies messages to the store, in order; see the module docstring.

    ``spool_only``: never touch the store (it hung): hold everything and keep it in the spool at exit.
    """

    def __init__(self, tracking_uri: str, reply: Reply, *, fast_path: bool = True, spool_only: bool = False) -> None:
        self.spool_only = spool_only
        self.client = None if spool_only else open_client(tracking_uri)
        self.reply = reply
        self.runs: dict[int, _OpenRun] = {}
        self.given_up = threading.Event()  # see serve()
        self.applied = 0  # messages applied so far, and how many of them were confirmed (Committed)
        self.confirmed = 0
        self._said_progress = time.monotonic()
        self.fast = None
        if fast_path and not spool_only:
            from autolr.tracking._fastpath import (
                SqlFastPath,  # optional: imports sqlalchemy
            )

            self.fast = SqlFastPath.for_client(self.client)
        self._unwritten = False  # a run's creation or points wait to be written (they are, once the inbox is empty)
        self._artifact_roots: dict[str, str] = {}
        self._handlers: dict[type, Callable[[Any], None]] = {
            CreateRun: self._create,
            LogPoints: self._points,
            SetTags: self._set_tags,
            EndRun: self._end,
            TerminateRun: self._terminate,
            Barrier: self._barrier,
        }
        # The store stopped answering: what could not be written waits here, per run, in order, and is
        # retried every RETRY_S; what is still here when the writer stops goes to the spool.
        self.held: dict[Any, RunBatch] = {}
        self.down_since: float | None = None
        self.next_try = 0.0
        self.spool = Spool(tracking_uri)
        self.held.update((key, _delivered_again(batch)) for key, batch in self.spool.load())
        if spool_only:
            self.down_since, self.next_try = time.time(), math.inf

    def apply(self, msg: ToWriter) -> None:
        self.applied += 1
        handler = self._handlers.get(type(msg))
        if handler is None:
            logger.error("unknown message %r", type(msg).__name__)
            return
        handler(msg)

    def confirm(self) -> None:
        """Tell the training process that every message applied so far is in the store (it keeps each
        message until then, for a writer that replaces this one should it die). Not while anything is
        held: held points live only in this process until the spool takes them at exit."""
        if not self.held and self.applied > self.confirmed:
            self.confirmed = self.applied
            self.reply(Committed(self.applied))

    def write_pending(self) -> None:
        for key, run in self.runs.items():
            if run.points or run.tags or run.new_run:
                self._write(key, run)
        self._unwritten = False

    def time_to_write(self) -> float | None:
        """Seconds until something is due to be written (0: now: what waits is written once the inbox
        is empty; held points at their next retry), or None when nothing waits."""
        due = []
        if self._unwritten:
            due.append(0.0)
        if self.held and not self.spool_only:
            due.append(self.next_try - time.monotonic())
        return max(0.0, min(due)) if due else None

    def retry_held(self, *, force: bool = False) -> None:
        """Write what the store refused while it was down, oldest run first (``force``: even before
        the next retry is due)."""
        if not self.held or self.spool_only or self.given_up.is_set() or (not force and time.monotonic() < self.next_try):
            return
        was_down = self.down_since is not None
        for key in list(self.held):
            batch = self.held[key]
            try:
                self._store_in_chunks(key, batch)
            except Exception as exc:
                if unreachable(exc):
                    self._went_down(exc)
                    return
                logger.exception("could not write %d held points to the MLflow run %s", len(batch.points), batch.run_id)
            del self.held[key]
            self._progress()
            if key in self.runs:
                self.runs[key].run_id = batch.run_id
            self.spool.done(key)
        self.down_since = None
        if was_down:
            self.reply(StoreUp())

    def finish(self) -> None:
        """The writer stops: what is held goes to the spool, for the next writer of this store. No last
        try while the store is down: a barrier just tried, and a store that hangs would hold the exit."""
        if self.held and self.down_since is None:  # read back from the spool, not tried yet
            self.retry_held(force=True)
        if not self.held:
            return
        try:
            path = self.spool.save(self.held)
        except Exception as exc:  # noqa: BLE001 - said in one line: the PointsUnsent reply names no file
            logger.error("could not keep the unsent MLflow points in %s: %s", self.spool.folder, describe(exc))
            path = None
        points = sum(len(b.points) for b in self.held.values())
        self.reply(PointsUnsent(points, len(self.held), str(path) if path else ""))

    def kill_open_runs(self) -> None:
        """The training process is gone (or closed the tracker mid-trial): open runs end KILLED."""
        for key in list(self.runs):
            error = {keys.ERROR: "the training process stopped before the trial ended"}
            self._end(EndRun(key, TrialState.KILLED, error, int(time.time() * 1000)))

    # --- one handler per message ------------------------------------------------------------------------

    def _create(self, msg: CreateRun) -> None:
        # created with its first points (on the fast path in the same transaction: one commit less)
        self.runs[msg.key] = _OpenRun(None, new_run=msg)
        self._unwritten = True

    def _points(self, msg: LogPoints) -> None:
        run = self._run(msg.key)
        out = run.points
        self._unwritten = True
        for item in msg.items:
            if isinstance(item, StepSeries):
                for name, series in item.values.items():
                    out.extend((name, float(v), item.timestamp_ms, item.first_step + i) for i, v in enumerate(series))
                flags = run.monitor.observe_steps(item.first_step, item.values.get("grad_norm", ()))
            else:
                out.extend((name, float(v), item.timestamp_ms, item.step) for name, v in item.values.items())
                flags = run.monitor.observe_layers(item.step, item.values)
            for flag in flags:
                reason_tag, step_tag = keys.gradient_flag(flag.kind)
                run.tags[step_tag] = str(flag.step)
                run.tags[reason_tag] = flag.reason

    def _set_tags(self, msg: SetTags) -> None:
        self._run(msg.key).tags.update(msg.tags)

    def _end(self, msg: EndRun) -> None:
        run = self.runs.pop(msg.key, None) or _OpenRun(None)
        state = TrialState(msg.state)
        run.tags.update({keys.STATE: state.optuna_state, keys.GRADIENTS: run.monitor.summary(), **msg.tags})
        self._write(msg.key, run, RunEnd(state.run_status, msg.end_ms))
        self.reply(RunClosed(msg.key))

    def _terminate(self, msg: TerminateRun) -> None:
        self._write(("run", msg.run_id), _OpenRun(msg.run_id), RunEnd(msg.status, msg.end_ms))

    def _barrier(self, msg: Barrier) -> None:
        # the training process waits: worth one more try if the store is back
        self.write_pending()
        self.retry_held(force=True)
        self.confirm()
        self.reply(BarrierDone(msg.token))

    # --- writing -----------------------------------------------------------------------------------------

    def _run(self, key: int) -> _OpenRun:
        return self.runs.setdefault(key, _OpenRun(None))

    def _write(self, key: Any, run: _OpenRun, end: RunEnd | None = None) -> None:
        """A run's creation if pending, its pending points and tags, and its end when given: one
        transaction on the fast path, MLflow's API otherwise. While the store is down (or this run
        already has points held) they are held, in order, for a retry."""
        batch = run.take(end)
        n = len(batch.points)
        if self.given_up.is_set():
            return
        if key in self.held or (self.down_since is not None and time.monotonic() < self.next_try):
            self._hold(key, batch)
        else:
            try:
                self._store(key, batch)
            except Exception as exc:
                if not unreachable(exc):
                    logger.exception("could not write %d points to the MLflow run %s", n, batch.run_id)
                else:
                    self._went_down(exc)
                    self._hold(key, batch)
            run.run_id = batch.run_id
        self.reply(PointsWritten(n))

    def _store_in_chunks(self, key: Any, batch: RunBatch) -> None:
        """:meth:`_store`, ``CHUNK_POINTS`` points a transaction, saying Progress in between: a long
        outage's backlog is written in steps a waiting training process sees (and a writer killed
        mid-way leaves only its last chunk to write again)."""
        while len(batch.points) > CHUNK_POINTS:
            part = RunBatch(batch.run_id, new_run=batch.new_run, params=batch.params, points=batch.points[:CHUNK_POINTS])
            try:
                self._store(key, part)
            finally:  # what of the chunk was written (a run created included) comes off the batch
                batch.run_id, batch.new_run, batch.params = part.run_id, part.new_run, part.params
                del batch.points[: CHUNK_POINTS - len(part.points)]
            if batch.run_id is None:  # the store refused the run (logged): nothing of it can be written
                return
            self._progress()
        self._store(key, batch)

    def _store(self, key: Any, batch: RunBatch) -> None:
        """Write one batch; on failure ``batch`` keeps what is left to write."""
        if batch.new_run is not None and batch.new_run.resumed and (found := self._created_before(batch.new_run)):
            # a dead writer's run, created before it died: this one goes on writing into it
            batch.run_id, batch.new_run, batch.params = found, None, {**batch.new_run.params, **batch.params}
            self._created(key, batch.run_id)
        if batch.new_run is not None:
            new_run = batch.new_run
            if self.fast is not None:
                run_id = self.fast.write(batch, artifact_root=self._artifact_root(new_run.experiment_id))
                if run_id is not None:
                    self._written(batch, run_id)
                    self._created(key, run_id)
                    return
            # created at once (so a failure after this point never creates it twice), params to follow
            batch.run_id, batch.new_run, batch.params = self._create_through_api(new_run), None, dict(new_run.params)
            self._created(key, batch.run_id)
        if batch.run_id is None:  # its creation was refused (logged): the trial goes on untracked
            return
        if not batch.params and self.fast is not None and self.fast.write(batch) is not None:
            self._written(batch, batch.run_id)
            return
        self._write_through_api(batch)

    def _created_before(self, new_run: CreateRun) -> str | None:
        """The id of the run an earlier writer created for ``new_run``, or None (raises when the store
        does not answer). The fast path gave it ``run_uuid`` as its id; MLflow's ``create_run`` names
        runs itself, so a run created through it carries ``run_uuid`` as a tag and is searched for."""
        if not new_run.run_uuid:
            return None
        try:
            return self.client.get_run(new_run.run_uuid).info.run_id
        except Exception as exc:
            if unreachable(exc):
                raise
        query = f"tags.`{keys.RUN_UUID}` = '{new_run.run_uuid}'"
        try:
            found = self.client.search_runs([new_run.experiment_id], filter_string=query, max_results=1)
        except Exception as exc:
            if unreachable(exc):
                raise
            # a store that refuses the search: the run is created (perhaps twice) rather than its points lost
            logger.warning("could not search the MLflow store for the run %s (%s): creating it", new_run.run_name, describe(exc))
            return None
        return found[0].info.run_id if found else None

    @staticmethod
    def _written(batch: RunBatch, run_id: str) -> None:
        batch.run_id, batch.new_run, batch.points, batch.tags, batch.end = run_id, None, [], {}, None

    def _created(self, key: Any, run_id: str | None) -> None:
        if isinstance(key, int):  # a trial run of the training process (not one read back from the spool)
            self.reply(RunCreated(key, run_id))

    def _create_through_api(self, new_run: CreateRun) -> str | None:
        """The run's id (its params still to log); None (logged) when the store rejects it. Raises when
        the store is unreachable."""
        try:
            tags = {**new_run.tags, keys.RUN_UUID: new_run.run_uuid} if new_run.run_uuid else new_run.tags
            run = self.client.create_run(new_run.experiment_id, start_time=new_run.start_ms, run_name=new_run.run_name, tags=tags)
        except Exception as exc:
            if unreachable(exc):
                raise
            logger.exception("could not create the MLflow run %s", new_run.run_name)
            return None
        return run.info.run_id

    def _artifact_root(self, experiment_id: str) -> str:
        if experiment_id not in self._artifact_roots:
            self._artifact_roots[experiment_id] = self.client.get_experiment(experiment_id).artifact_location
        return self._artifact_roots[experiment_id]

    def _write_through_api(self, batch: RunBatch) -> None:
        """Params, points, tags and end through MLflow's public ``log_batch``, taking each call's share
        off the batch once it succeeds: a retry sends only the rest. A run whose data the store refuses
        is still ended."""
        try:
            self._log_and_take(batch.run_id, batch.params, "params", Param)
            while batch.points:
                self.client.log_batch(batch.run_id, metrics=[Metric(*p) for p in batch.points[:BATCH_LIMIT]])
                del batch.points[:BATCH_LIMIT]
                self._progress()
            self._log_and_take(batch.run_id, batch.tags, "tags", RunTag)
        except Exception as exc:
            if batch.end is not None and not unreachable(exc):
                with contextlib.suppress(Exception):
                    self.client.set_terminated(batch.run_id, status=batch.end.status, end_time=batch.end.end_ms)
                batch.end = None
            raise
        if batch.end is not None:
            self.client.set_terminated(batch.run_id, status=batch.end.status, end_time=batch.end.end_ms)
            batch.end = None

    def _log_and_take(self, run_id: str, items: dict[str, str], field: str, entity: type) -> None:
        """Log ``items`` as params or tags, ``TAG_LIMIT`` a call, removing each call's share once it
        succeeded."""
        while items:
            chunk = list(items.items())[:TAG_LIMIT]
            self.client.log_batch(run_id, **{field: [entity(k, v) for k, v in chunk]})
            for k, _ in chunk:
                del items[k]

    def _progress(self) -> None:
        """At most once a second during a long write: the training process then knows the writer is
        slow, not stuck in a store that hangs."""
        if time.monotonic() - self._said_progress >= 1.0:
            self._said_progress = time.monotonic()
            self.reply(Progress())

    def _hold(self, key: Any, batch: RunBatch) -> None:
        if key in self.held:
            self.held[key].merge(batch)
        else:
            self.held[key] = batch

    def _went_down(self, exc: BaseException) -> None:
        self.next_try = time.monotonic() + RETRY_S
        if self.down_since is None:
            self.down_since = time.time()
            self.reply(StoreDown(describe(exc), disk_full=disk_full(exc)))


def _delivered_again(batch: RunBatch) -> RunBatch:
    """A spooled run's creation may have been written already (a writer that delivered the file died
    before removing it): a run the store has under its id is adopted, not created twice."""
    if batch.new_run is not None and batch.new_run.run_uuid:
        batch.new_run = dataclasses.replace(batch.new_run, resumed=True)
    return batch


STOP = None  # in the inbox: stop (or the training process is gone)


def serve(
    tracking_uri: str, inbox: queue.Queue, reply: Reply, *, fast_path: bool = True, spool_only: bool = False, given_up: threading.Event | None = None
) -> None:
    """The writer loop: take everything that has arrived, apply it in order (ends and barriers commit
    at once), then commit what waits in one transaction.
    ``given_up`` (a writer thread): once set, the loop writes nothing more and leaves, as soon as the
    store call it hangs in returns; a successor has its work."""
    writer = Writer(tracking_uri, reply, fast_path=fast_path, spool_only=spool_only)
    if given_up is not None:
        writer.given_up = given_up
    reply(Committed(0))  # ready: from here the training process may count the writer's silence
    stopping = False
    try:
        while not stopping and not writer.given_up.is_set():
            batch = []
            with contextlib.suppress(queue.Empty):
                batch.append(inbox.get(timeout=writer.time_to_write()))
                while len(batch) < 10_000:
                    batch.append(inbox.get_nowait())
            for msg in batch:
                if msg is STOP:
                    stopping = True
                    break
                try:
                    writer.apply(msg)
                except Exception:
                    logger.exception("the MLflow writer could not apply %s", type(msg).__name__)
            if stopping or writer.time_to_write() == 0.0:
                try:
                    writer.write_pending()
                    writer.retry_held()
                    writer.confirm()
                except Exception:
                    logger.exception("the MLflow writer could not write its pending points")
    finally:
        if not writer.given_up.is_set():
            try:
                writer.kill_open_runs()
            finally:
                writer.finish()
                reply(WriterExited())
