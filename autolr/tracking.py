"""MLflow tracking: the one module that imports mlflow.

One experiment per study, one parent run per invocation, one nested run per trial. A run always ends
in a final state: FINISHED (COMPLETE or PRUNED trials; ``autolr.state`` tells which), FAILED, or KILLED
(interrupted).

Why a writer process. MLflow's ``log_batch`` on its SQLAlchemy store spends ~50-70 us of CPU per metric
point (an ORM object each, the latest-metrics update) plus a transaction per call; a small model's
training step takes ~300-400 us and yields three points. Written in the training process, tracking
would cost more than training; written from a thread, it would compete for the GIL the training loop
holds between torch ops. So a trial run's SQL work all happens in one writer process per
:class:`Tracker`, and the training process only appends to a list:

1. the training process hands a trial's points to the writer at each epoch end, on prune, at the end of
   the trial and at least every ``FLUSH_INTERVAL_S``: one pickled message written to a non-blocking pipe
   from the training thread itself (no helper thread to wake, so no GIL handoffs);
2. the writer commits pending points once the oldest has waited ``WRITE_DELAY_S`` (or ``WRITE_POINTS``
   are pending), taking everything that arrived meanwhile into the same transaction, and at once for a
   trial's end or a barrier. Committing while the trial trains, on the writer's own core, leaves little
   for the end of the trial (a 0.25 s digits trial, side by side over 31 rounds: 1.01x-1.02x the untracked
   loop, against 1.04x when the writer waited 0.3 s and so wrote the trial's points after it); at most 20 commits a
   second per writer keeps the SQLite file's write lock free for other workers. ``Tracker.flush()``
   is a barrier, and every point comes back with its step through
   ``MlflowClient.get_metric_history``;
3. the writer creates, tags and closes each trial run in order, closing it in the transaction that
   commits its last points: the training process never waits at the end of a trial;
4. on SQLite and PostgreSQL stores the writer inserts rows into MLflow's own tables with the driver's
   ``executemany`` (``_SqlFastPath``, ~5 us a point instead of ~60), falling back to MLflow's API for
   anything it cannot take;
5. the writer watches gradient health on the way (:class:`autolr.monitor.GradientMonitor`) and tags it;
6. if the training process dies, the writer sees its pipe close and ends every open run KILLED; if the
   writer dies, :meth:`Tracker.close` ends, from the training process, the runs it knows of;
7. if the store stops answering (connection refused or timed out), the writer holds what it cannot
   write, per run and in order, tries again every ``RETRY_S`` and at every barrier, and at exit keeps
   what is still held in a spool file that the next writer for the store writes first (:class:`_Spool`).
   Held points count as handled for ``flush`` and the backlog: training never waits for a dead store.

The writer runs in a session of its own, so a Ctrl-C in the terminal reaches the training process only;
the interrupted trial ends KILLED through the normal path. SQLite stores are switched to WAL (readers
such as ``autolr ui`` never block the writer) and the writer commits with ``synchronous=NORMAL``: a
commit survives any crash of the processes; only an OS crash can lose the last ones.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import itertools
import logging
import math
import os
import pickle
import queue
import re
import select
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
import weakref
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from autolr import sqlite
from autolr.config import DEFAULT_TRACKING_URI
from autolr.errors import TrackingUnavailableError
from autolr.monitor import GradientMonitor

__all__ = ["DEFAULT_TRACKING_URI", "Tracker", "TrialRun", "artifact_root_for"]

logger = logging.getLogger(__name__)

BATCH_LIMIT = 1000  # MLflow's log_batch accepts at most 1000 entities (metrics + params + tags) a call
TAG_LIMIT = 100  # ... and at most 100 params and 100 tags
FLUSH_INTERVAL_S = 0.1  # points wait at most this long in the training process...
WRITE_DELAY_S = 0.05  # ... and at most this long in the writer before they are committed,
WRITE_POINTS = 20_000  # or until this many are pending
RETRY_S = 10.0  # while the store does not answer, the writer holds what it gets and tries again this often
MAX_BACKLOG_POINTS = 1_000_000  # beyond this many points not handled yet, training waits for the writer
WRITER_MODES = ("process", "thread")
STUDY_UID_TAG = "autolr.study_uid"
_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED", "KILLED": "KILLED"}
_OPTUNA_STATE = {"KILLED": "FAIL"}


def artifact_root_for(tracking_uri: str) -> str | None:
    """Artifacts sit beside an SQLite store (``mlruns/mlflow.db`` -> ``mlruns/artifacts``)."""
    parsed = urllib.parse.urlparse(tracking_uri)
    if parsed.scheme != "sqlite":
        return None
    return (_sqlite_path(tracking_uri).parent.resolve() / "artifacts").as_uri()


def _sqlite_path(tracking_uri: str) -> Path:
    return Path(tracking_uri[len("sqlite:///") :])


def _open_client(tracking_uri: str) -> MlflowClient:
    """An MlflowClient. A SQLite store's folder is created and its database switched to WAL (persists in
    the file), all under a file lock: MLflow creates a new database's tables check-then-act, so two
    processes opening a fresh store at the same moment would both create them, and one would fail."""
    if not tracking_uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri=tracking_uri)
    with sqlite.prepared(_sqlite_path(tracking_uri)):
        return MlflowClient(tracking_uri=tracking_uri)  # creates and migrates the tables


def _alive(pid: int) -> bool:
    if pid <= 0:
        return True  # unknown: leave it be
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _param_text(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


class Tracker:
    """Writes a study's runs to an MLflow tracking store.

    The parent run and other rare writes go straight through ``self.client``; trial runs go through the
    writer (see the module docstring), which starts with the first trial run.

    Args:
        tracking_uri: any MLflow tracking URI; ``sqlite:///`` stores get WAL mode and artifacts beside them.
        experiment: the experiment's name (the study's).
        writer: ``"process"`` (default: the SQLAlchemy work leaves the training process) or ``"thread"``.
    """

    def __init__(self, tracking_uri: str = DEFAULT_TRACKING_URI, *, experiment: str, writer: str = "process") -> None:
        if writer not in WRITER_MODES:
            raise ValueError(f"writer: expected one of {WRITER_MODES}, got {writer!r}")
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment
        self.writer = writer
        self.study_uid: str | None = None  # set by the study: its runs are tagged, and only they are read back
        self.store_down: str | None = None  # why the store stopped answering, while it does not
        self.client = _open_client(tracking_uri)
        self._experiment_id: str | None = None
        self._link: _ProcessLink | _ThreadLink | None = None
        self._keys = itertools.count()
        self._tokens = itertools.count()
        self._cond = threading.Condition()
        self._run_ids: dict[int, str | None] = {}
        self._ended: dict[int, str] = {}  # key -> final state, as sent
        self._closed_keys: set[int] = set()  # confirmed closed by the writer
        self._done: set[int] = set()
        self._sent_points = 0
        self._written_points = 0
        self._writer_alive = False
        self._warned_backlog = False
        self._pid = os.getpid()  # a forked child must not drive its parent's writer

    def __getstate__(self) -> dict[str, Any]:  # worker processes rebuild a tracker from its address
        return {"tracking_uri": self.tracking_uri, "experiment": self.experiment_name, "writer": self.writer, "study_uid": self.study_uid}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["tracking_uri"], experiment=state["experiment"], writer=state["writer"])
        self.study_uid = state.get("study_uid")

    def check_reachable(self, timeout_s: float = 5.0) -> None:
        """Fail fast, with the fix in the message, when an HTTP tracking server does not answer."""
        if not self.tracking_uri.startswith(("http://", "https://")):
            return
        import urllib.request

        url = self.tracking_uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s):  # noqa: S310 - user-chosen tracking URI
                return
        except Exception as exc:  # noqa: BLE001
            raise TrackingUnavailableError(
                f"--tracking-uri {self.tracking_uri}: no MLflow server answered ({exc}); start it "
                f"(mlflow server --host 127.0.0.1) or use the embedded store ({DEFAULT_TRACKING_URI})"
            ) from None

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            exp = self.client.get_experiment_by_name(self.experiment_name)
            if exp is not None:
                self._experiment_id = exp.experiment_id
            else:
                try:
                    self._experiment_id = self.client.create_experiment(
                        self.experiment_name, artifact_location=artifact_root_for(self.tracking_uri)
                    )
                except mlflow.exceptions.MlflowException:  # another worker created it first
                    self._experiment_id = self.client.get_experiment_by_name(self.experiment_name).experiment_id
        return self._experiment_id

    # --- the parent run and other rare writes: synchronous -------------------------------------------

    @contextlib.contextmanager
    def parent_run(self, run_name: str, *, params: Mapping[str, Any], tags: Mapping[str, str], description: str = "") -> Iterator[str]:
        """The invocation's run; ends KILLED on Ctrl-C, FAILED on an error, FINISHED otherwise.

        Before it ends, every trial run sent to the writer is written and closed (or held, with the
        parent's own end, while the store does not answer).
        """
        all_tags = {**tags, "autolr.pid": str(os.getpid()), "autolr.host": socket.gethostname()}  # see close_orphans
        if self.study_uid:
            all_tags[STUDY_UID_TAG] = self.study_uid
        if description:
            all_tags["mlflow.note.content"] = description
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags)
        run_id = run.info.run_id
        status = "FINISHED"
        try:
            self.log_params(run_id, params)
            yield run_id
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        except BaseException:
            status = "FAILED"
            raise
        finally:
            try:
                self.flush()
            finally:
                self._terminate(run_id, status)

    def _terminate(self, run_id: str, status: str) -> None:
        """End a run of this process; while the store is down, the writer holds the end with the rest."""
        end_ms = int(time.time() * 1000)
        if self.store_down is None and self.reachable():
            try:
                self.client.set_terminated(run_id, status=status, end_time=end_ms)
                return
            except Exception as exc:
                if not _unreachable(exc):
                    raise
                self.store_down = str(exc)
        self._send(("terminate", run_id, status, end_ms))

    def start_writer(self) -> None:
        """Start the writer now rather than with the first trial run (its start-up, imports, then overlaps
        other work); it writes any spooled points first."""
        if self._link is None:
            self._start_writer()

    def write_unsent(self) -> None:
        """Write what an earlier writer for this store had to keep when the store stopped answering."""
        if _Spool(self.tracking_uri).pending():
            self.start_writer()
            self.flush()

    def reachable(self, timeout_s: float = 5.0) -> bool:
        """One quick look (an HTTP server's /health) before a burst of calls from this process, whose
        MLflow client would retry for minutes against a server that is gone."""
        try:
            self.check_reachable(timeout_s)
        except TrackingUnavailableError as exc:
            self.store_down = self.store_down or str(exc)
            return False
        return True

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        items = [Param(k, _param_text(v)) for k, v in params.items()]
        for i in range(0, len(items), TAG_LIMIT):
            self.client.log_batch(run_id, params=items[i : i + TAG_LIMIT])

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for i in range(0, len(items), TAG_LIMIT):
            self.client.log_batch(run_id, tags=items[i : i + TAG_LIMIT])

    def set_description(self, run_id: str, text: str) -> None:
        """The run's description (markdown) in the MLflow UI."""
        self.client.set_tag(run_id, "mlflow.note.content", text)

    def log_artifact(self, run_id: str, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def log_artifacts(self, run_id: str, local_dir: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    def log_range_test(
        self,
        parent_run_id: str | None,
        *,
        optimizer: str,
        params: Mapping[str, Any],
        curve: Mapping[str, Sequence[float]],
        artifacts: Sequence[str | os.PathLike] = (),
    ) -> str:
        """One LR range test as a run of its own (nested under ``parent_run_id`` when given): ``params``,
        each series of ``curve`` as a metric (step = index; non-finite points left out), written with
        ``log_batch``, and the files in ``artifacts``. Returns the run's id."""
        tags = {"autolr.role": "range_test", "autolr.optimizer": optimizer}
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run_id = self.client.create_run(self.experiment_id, run_name=f"range-test-{optimizer}", tags=tags).info.run_id
        status = "FAILED"
        try:
            self.log_params(run_id, params)
            now = int(time.time() * 1000)
            points = [
                Metric(key, float(v), now, step) for key, series in curve.items() for step, v in enumerate(series) if math.isfinite(v)
            ]
            for i in range(0, len(points), BATCH_LIMIT):
                self.client.log_batch(run_id, metrics=points[i : i + BATCH_LIMIT])
            for path in artifacts:
                self.log_artifact(run_id, path)
            status = "FINISHED"
        finally:
            self.client.set_terminated(run_id, status=status)
        return run_id

    def close_orphans(self, dead: Mapping[int, str]) -> int:
        """Close what died with its process: trial runs still RUNNING whose trial (number -> reason) is
        in ``dead`` end FAILED; invocation runs still RUNNING whose process (``autolr.pid`` on this host)
        is gone end KILLED. (A trial run of a killed process is normally closed by its writer.) Returns
        how many runs were closed."""
        closed = 0
        for number, run_id in (self.trial_runs(status="RUNNING") if dead else {}).items():
            if number in dead:
                self.set_tags(run_id, {"autolr.state": "FAIL", "autolr.error": dead[number][:500]})
                self.client.set_terminated(run_id, status="FAILED")
                closed += 1
        query = "tags.`autolr.role` = 'study' and attributes.status = 'RUNNING'"
        for run in self.client.search_runs([self.experiment_id], query, max_results=1000):
            tags = run.data.tags
            if tags.get("autolr.host") == socket.gethostname() and not _alive(int(tags.get("autolr.pid", "0"))):
                self.set_tags(run.info.run_id, {"autolr.error": "the invocation's process ended without closing its run"})
                self.client.set_terminated(run.info.run_id, status="KILLED")
                closed += 1
        return closed

    # --- reading back ----------------------------------------------------------------------------------

    def metric_history(self, run_id: str, key: str) -> tuple[list[int], list[float]]:
        """Every point of one metric of one run, as (steps, values) sorted by step."""
        points = sorted(self.client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
        return [m.step for m in points], [m.value for m in points]

    def run_tags(self, run_id: str) -> dict[str, str]:
        return dict(self.client.get_run(run_id).data.tags)

    def trial_runs(self, parent_run_id: str | None = None, *, status: str | None = None) -> dict[int, str]:
        """Trial number -> run id of the study's trial runs (the latest run per number; all the
        experiment's when no ``study_uid`` is set), or only those of one parent run, or only those in
        one status (``RUNNING``, ``FINISHED``, ...)."""
        query = "tags.`autolr.role` = 'trial'"
        if parent_run_id:
            query += f" and tags.`mlflow.parentRunId` = '{parent_run_id}'"
        if status:
            query += f" and attributes.status = '{status}'"
        runs: dict[int, tuple[int, str]] = {}
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], query, max_results=1000, page_token=token)
            for run in page:
                if self.study_uid and run.data.tags.get(STUDY_UID_TAG, self.study_uid) != self.study_uid:
                    continue  # another storage's study of the same name (runs from before uids count)
                number = int(run.data.tags.get("autolr.trial", -1))
                if number not in runs or run.info.start_time > runs[number][0]:
                    runs[number] = (run.info.start_time, run.info.run_id)
            token = page.token
            if not token:
                return {number: run_id for number, (_, run_id) in runs.items()}

    # --- trial runs: through the writer ----------------------------------------------------------------

    def trial_run(self, parent_run_id: str | None, trial_number: int, params: Mapping[str, Any]) -> "TrialRun":
        """A new trial run; the writer creates it with its first points (nothing here waits)."""
        tags = {"autolr.trial": str(trial_number), "autolr.state": "RUNNING", "autolr.role": "trial"}
        if self.study_uid:
            tags[STUDY_UID_TAG] = self.study_uid
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        key = next(self._keys)
        texts = {k: _param_text(v) for k, v in params.items()}
        self._send(("create", key, self.experiment_id, f"trial-{trial_number}", tags, texts, int(time.time() * 1000)))
        return TrialRun(self, key)

    def flush(self, timeout_s: float = 300.0) -> bool:
        """Wait until every point sent so far is committed and every ended trial run is closed (or,
        while the store does not answer, held for a retry: see :attr:`store_down`).

        Returns False (and logs why) when the writer did not get there within ``timeout_s``.
        """
        if self._link is None:
            return True
        token = next(self._tokens)
        self._send(("barrier", token))
        if self._wait(lambda: token in self._done, timeout_s):
            return True
        logger.warning("the MLflow writer did not confirm within %.0f s; some points may not be written yet", timeout_s)
        return False

    def close(self, timeout_s: float = 300.0) -> None:
        """Write everything, stop the writer, and end any run the writer could not close."""
        if self._link is None or os.getpid() != self._pid:
            return
        try:
            self.flush(timeout_s)
        finally:
            link, self._link = self._link, None
            _LIVE.discard(self)
            link.close(timeout_s=60.0)  # a writer mid-call to a hung server needs its HTTP timeout
            self._repair()

    def run_id(self, key: int, timeout_s: float = 300.0) -> str | None:
        """The MLflow run id of a trial run (a barrier: the writer creates runs with their first points)."""
        if key not in self._run_ids:
            self.flush(timeout_s)
        return self._run_ids.get(key)

    def _send(self, msg: tuple, points: int = 0) -> None:
        if self._link is None:
            self._start_writer()
        if points:
            self._sent_points += points
            if self._sent_points - self._written_points > MAX_BACKLOG_POINTS:
                self._wait_for_backlog()
        if msg[0] == "end":
            self._ended[msg[1]] = msg[2]
        self._link.send(msg)

    def _wait_for_backlog(self) -> None:
        if not self._warned_backlog:
            self._warned_backlog = True
            logger.warning("the MLflow writer is %d points behind; training waits for it", self._sent_points - self._written_points)
        self._wait(lambda: self._sent_points - self._written_points <= MAX_BACKLOG_POINTS // 2, None)

    def _start_writer(self) -> None:
        link_class = _ProcessLink if self.writer == "process" else _ThreadLink
        try:
            self._link = link_class(self.tracking_uri, self._on_reply)
        except OSError as exc:  # no subprocess allowed here: the thread still keeps the store work batched
            logger.warning("could not start the MLflow writer process (%s); writing from a thread", exc)
            self._link = _ThreadLink(self.tracking_uri, self._on_reply)
        self._writer_alive = True
        _LIVE.add(self)

    def _on_reply(self, msg: tuple) -> None:
        with self._cond:
            kind = msg[0]
            if kind == "created":
                self._run_ids[msg[1]] = msg[2]
            elif kind == "closed":
                self._closed_keys.add(msg[1])
            elif kind == "written":
                self._written_points += msg[1]
            elif kind == "done":
                self._done.add(msg[1])
            elif kind == "exit":
                self._writer_alive = False
            elif kind == "down":
                self.store_down = msg[1]
                logger.error(
                    "the MLflow tracking store %s stopped answering (%s); training goes on, and the points "
                    "are held and sent again every %.0f s", _redact(self.tracking_uri), msg[1], RETRY_S,
                )  # fmt: skip
            elif kind == "up":
                self.store_down = None
                logger.warning("the MLflow tracking store %s answers again; the held points are written", _redact(self.tracking_uri))
            elif kind == "unsent":
                logger.error(
                    "%d points of %d MLflow runs could not be written to %s; they are kept in %s, and the next "
                    "autolr run that reaches the store writes them", msg[1], msg[2], _redact(self.tracking_uri), msg[3],
                )  # fmt: skip
            self._cond.notify_all()

    def _wait(self, predicate: Callable[[], bool], timeout_s: float | None) -> bool:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            with self._cond:
                if predicate():
                    return True
                if not self._writer_alive or self._link is None:
                    return False
            left = 0.05 if deadline is None else min(0.05, deadline - time.monotonic())
            if left <= 0:
                return False
            self._link.poll(left)

    def _repair(self) -> None:
        """Runs the writer created but did not confirm closed (it died): end them from here."""
        for key, run_id in list(self._run_ids.items()):
            if run_id is None or key in self._closed_keys:
                continue
            state = self._ended.get(key, "KILLED")
            logger.error("the MLflow writer stopped before closing run %s; ending it %s from here", run_id, state)
            with contextlib.suppress(Exception):
                self.client.set_tag(run_id, "autolr.state", state)
                self.client.set_terminated(run_id, status=_STATUS[state])
            self._closed_keys.add(key)


_LIVE: "weakref.WeakSet[Tracker]" = weakref.WeakSet()


@atexit.register
def _close_live_trackers() -> None:
    for tracker in list(_LIVE):
        tracker.close(timeout_s=60.0)


class TrialRun:
    """One trial's run: buffers points, hands them to the writer, always ends in a final state.

    Use as a context manager; call :meth:`end` with the trial's state before leaving it, or the state is
    taken from how the block ended (KeyboardInterrupt -> KILLED, any other exception -> FAIL).
    """

    def __init__(self, tracker: Tracker, key: int) -> None:
        self.tracker = tracker
        self.key = key
        self._items: list[tuple] = []
        self._points = 0
        self._last_send = time.monotonic()
        self._state: str | None = None

    @property
    def run_id(self) -> str | None:
        """The MLflow run id; a barrier (the writer creates a run with its first points): avoid in loops."""
        return self.tracker.run_id(self.key)

    def log_steps(self, first_step: int, values: Mapping[str, Sequence[float]]) -> None:
        """Per-step series of consecutive steps from ``first_step`` (the trainer's window)."""
        self._items.append(("steps", first_step, int(time.time() * 1000), dict(values)))
        self._points += sum(len(v) for v in values.values())
        if time.monotonic() - self._last_send >= FLUSH_INTERVAL_S:
            self.flush()

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        self._items.append(("at", step, int(time.time() * 1000), dict(metrics)))
        self._points += len(metrics)

    def flush(self) -> None:
        """Hand the buffered points to the writer (returns at once; :meth:`Tracker.flush` waits)."""
        self._last_send = time.monotonic()
        if not self._items:
            return
        items, points = self._items, self._points
        self._items, self._points = [], 0
        self.tracker._send(("points", self.key, items), points)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.tracker._send(("tags", self.key, {k: str(v) for k, v in tags.items()}))

    def end(self, state: str, tags: Mapping[str, Any] | None = None) -> None:
        """Record the trial's final state (COMPLETE, PRUNED, FAIL or KILLED); the writer closes the run
        after its last points are committed."""
        if self._state is not None:
            return
        if state not in _STATUS:
            raise ValueError(f"state: expected one of {sorted(_STATUS)}, got {state!r}")
        self._state = state
        self.flush()
        self.tracker._send(("end", self.key, state, {k: str(v) for k, v in (tags or {}).items()}, int(time.time() * 1000)))

    def __enter__(self) -> "TrialRun":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.end("COMPLETE")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.end("KILLED", {"autolr.error": "interrupted"})
        else:
            self.end("FAIL", {"autolr.error": f"{exc_type.__name__}: {exc}"[:500]})


# --- the writer: owns the SQLAlchemy work of trial runs ----------------------------------------------

Point = tuple[str, float, int, int]  # key, value, timestamp (ms), step


@dataclasses.dataclass
class _OpenRun:
    run_id: str | None
    new_run: dict | None = None  # a creation not written yet (fast path: it goes with the first points)
    monitor: GradientMonitor = dataclasses.field(default_factory=GradientMonitor)
    points: list[Point] = dataclasses.field(default_factory=list)
    tags: dict[str, str] = dataclasses.field(default_factory=dict)


class _Writer:
    """Applies the training process's messages to the store, in order."""

    def __init__(self, tracking_uri: str, reply: Callable[[tuple], None]) -> None:
        self.client = _open_client(tracking_uri)
        self.reply = reply
        self.runs: dict[int, _OpenRun] = {}
        self.fast = _SqlFastPath.for_client(self.client)
        self._pending = 0  # points not yet written, over all runs
        self._artifact_roots: dict[str, str] = {}
        self._oldest: float | None = None  # when the oldest of them arrived
        # The store stopped answering: what could not be written waits here, per run, in order, and is
        # retried every RETRY_S; what is still here when the writer stops goes to the spool folder,
        # which the next writer for this store reads first.
        self.held: dict[Any, dict] = {}
        self.down_since: float | None = None
        self.next_try = 0.0
        self.spool = _Spool(tracking_uri)
        self.held.update(self.spool.load())

    def apply(self, msg: tuple) -> None:
        kind, args = msg[0], msg[1:]
        if kind == "points":
            self._points(*args)
        elif kind == "tags":
            self._run(args[0]).tags.update(args[1])
        elif kind == "create":
            self._create(*args)
        elif kind == "end":
            self._end(*args)
        elif kind == "terminate":  # a run of the training process itself (its parent run), while the store is down
            run_id, status, end_ms = args
            self._write(_OpenRun(run_id), end=(status, end_ms), key=("run", run_id))
        elif kind == "barrier":  # the training process waits: worth one more try if the store is back
            self.write_pending()
            self.retry_held(force=True)
            self.reply(("done", args[0]))
        else:
            logger.error("unknown message %r", kind)

    def write_pending(self) -> None:
        for key, run in self.runs.items():
            if run.points or run.tags or run.new_run:
                self._write(run, key=key)
        self._pending, self._oldest = 0, None

    def time_to_write(self) -> float | None:
        """Seconds until pending points are due (0: now), or None when nothing is pending."""
        due = []
        if self._oldest is not None:
            due.append(0.0 if self._pending >= WRITE_POINTS else self._oldest + WRITE_DELAY_S - time.monotonic())
        if self.held:
            due.append(self.next_try - time.monotonic())
        return max(0.0, min(due)) if due else None

    def retry_held(self, *, force: bool = False) -> None:
        """Write what the store refused while it was down, oldest run first (``force``: even before
        the next retry is due)."""
        if not self.held or (not force and time.monotonic() < self.next_try):
            return
        was_down = self.down_since is not None
        for key in list(self.held):
            entry = self.held[key]
            try:
                self._store(entry, key)
            except Exception as exc:  # noqa: BLE001
                if _unreachable(exc):
                    self._went_down(exc)
                    return
                logger.exception("could not write %d held points to the MLflow run %s", len(entry["points"]), entry["run_id"])
            del self.held[key]
            if key in self.runs:
                self.runs[key].run_id = entry["run_id"]
            self.spool.done(key)
        self.down_since = None
        if was_down:
            self.reply(("up",))

    def finish(self) -> None:
        """The writer stops: what is held goes to the spool folder first (a writer killed during the last
        try loses nothing), then one last try; the file goes once everything in it is written."""
        if not self.held:
            return
        before = len(self.held)
        try:
            path = self.spool.save(self.held)
        except Exception:  # noqa: BLE001 - an unwritable spool folder: say what is lost
            logger.exception("could not keep the unsent MLflow points on disk")
            path = None
        self.retry_held(force=True)
        if path is not None and len(self.held) < before:  # some of it went: keep only the rest
            path.unlink(missing_ok=True)
            path = self.spool.save(self.held) if self.held else None
        if self.held:
            points = sum(len(e["points"]) for e in self.held.values())
            self.reply(("unsent", points, len(self.held), str(path or "nowhere (see the error above)")))

    def kill_open_runs(self) -> None:
        """The training process is gone (or closed the tracker mid-trial): open runs end KILLED."""
        for key in list(self.runs):
            self._end(key, "KILLED", {"autolr.error": "the training process stopped before the trial ended"})

    def _run(self, key: int) -> _OpenRun:
        return self.runs.setdefault(key, _OpenRun(None))

    def _create(self, key: int, experiment_id: str, run_name: str, tags: dict[str, str], params: dict[str, str], start_ms: int) -> None:
        new_run = {"experiment_id": experiment_id, "run_name": run_name, "tags": tags, "params": params, "start_ms": start_ms}
        # created with its first points (on the fast path in the same transaction: one commit less)
        self.runs[key] = _OpenRun(None, new_run=new_run)
        self._oldest = self._oldest or time.monotonic()

    def _create_through_api(self, new_run: dict) -> str | None:
        """The run's id (its params still to log); None (logged) when the store rejects it. Raises when
        the store is unreachable."""
        try:
            return self.client.create_run(
                new_run["experiment_id"], start_time=new_run["start_ms"], run_name=new_run["run_name"], tags=new_run["tags"]
            ).info.run_id
        except Exception as exc:  # noqa: BLE001 - the trial goes on untracked rather than failing
            if _unreachable(exc):
                raise
            logger.exception("could not create the MLflow run %s", new_run["run_name"])
            return None

    def _artifact_root(self, experiment_id: str) -> str:
        if experiment_id not in self._artifact_roots:
            self._artifact_roots[experiment_id] = self.client.get_experiment(experiment_id).artifact_location
        return self._artifact_roots[experiment_id]

    def _points(self, key: int, items: list[tuple]) -> None:
        run = self._run(key)
        out = run.points
        before = len(out)
        if self._oldest is None:
            self._oldest = time.monotonic()
        for kind, step, timestamp, values in items:
            if kind == "steps":
                for name, series in values.items():
                    out.extend((name, float(v), timestamp, step + i) for i, v in enumerate(series))
                flags = run.monitor.observe_steps(step, values.get("grad_norm", ()))
            else:
                out.extend((name, float(v), timestamp, step) for name, v in values.items())
                flags = run.monitor.observe_layers(step, values)
            for flag in flags:
                run.tags[f"autolr.{flag.kind}_step"] = str(flag.step)
                run.tags[f"autolr.{flag.kind}"] = flag.reason
        self._pending += len(out) - before

    def _end(self, key: int, state: str, tags: dict[str, str], end_ms: int | None = None) -> None:
        run = self.runs.pop(key, None) or _OpenRun(None)
        # the tag carries Optuna's state (an interrupted trial is FAIL there); the run status says KILLED
        run.tags.update({"autolr.state": _OPTUNA_STATE.get(state, state), "autolr.gradients": run.monitor.summary(), **tags})
        self._write(run, end=(_STATUS[state], end_ms or int(time.time() * 1000)), key=key)
        self.reply(("closed", key))

    def _write(self, run: _OpenRun, end: tuple[str, int] | None = None, *, key: Any) -> None:
        """A run's creation if pending, its pending points and tags, and its end when ``end`` (status,
        end time in ms) is given: one transaction on the fast path, MLflow's API otherwise. While the
        store is down (or this run already has points held) they are held, in order, for a retry."""
        entry = {"run_id": run.run_id, "new_run": run.new_run, "points": run.points, "end": end,
                 "tags": {k: v[:8000] for k, v in run.tags.items()}}  # fmt: skip
        run.points, run.tags, run.new_run = [], {}, None
        n = len(entry["points"])
        if key in self.held or (self.down_since is not None and time.monotonic() < self.next_try):
            self._hold(key, entry)
        else:
            try:
                self._store(entry, key)
            except Exception as exc:  # noqa: BLE001 - keep the writer (and the study) alive
                if not _unreachable(exc):
                    logger.exception("could not write %d points to the MLflow run %s", n, entry["run_id"])
                else:
                    self._went_down(exc)
                    self._hold(key, entry)
            run.run_id = entry["run_id"]
        self.reply(("written", n))

    def _store(self, entry: dict, key: Any) -> None:
        """Write one entry (see :meth:`_write`); on failure ``entry`` keeps what is left to write."""
        if entry["new_run"] is not None:
            new_run = entry["new_run"]
            if self.fast is not None:
                row = self.fast.new_run(self._artifact_root(new_run["experiment_id"]), **new_run)
                if self.fast.write(row["run"]["run_uuid"], entry["points"], entry["tags"], entry["end"], new_run=row):
                    entry.update(run_id=row["run"]["run_uuid"], new_run=None, points=[], tags={}, end=None)
                    self._created(key, entry["run_id"])
                    return
            # created at once (so a failure after this point never creates it twice), params to follow
            entry.update(run_id=self._create_through_api(new_run), new_run=None, params=dict(new_run["params"]))
            self._created(key, entry["run_id"])
        if entry["run_id"] is None:  # its creation was refused (logged): the trial goes on untracked
            return
        if not entry.get("params") and self.fast is not None and self.fast.write(entry["run_id"], entry["points"], entry["tags"], entry["end"]):
            entry.update(points=[], tags={}, end=None)
            return
        self._write_through_api(entry)

    def _created(self, key: Any, run_id: str | None) -> None:
        if isinstance(key, int):  # a trial run of the training process (not one read back from the spool)
            self.reply(("created", key, run_id))

    def _hold(self, key: Any, entry: dict) -> None:
        held = self.held.get(key)
        if held is None:
            self.held[key] = entry
            return
        held["points"].extend(entry["points"])
        held["tags"].update(entry["tags"])
        held.setdefault("params", {}).update(entry.get("params") or {})
        held["end"] = entry["end"] or held["end"]
        held["run_id"] = held["run_id"] or entry["run_id"]

    def _went_down(self, exc: BaseException) -> None:
        self.next_try = time.monotonic() + RETRY_S
        if self.down_since is None:
            self.down_since = time.time()
            self.reply(("down", f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]))

    def _log_and_take(self, run_id: str, items: dict[str, str], field: str, entity: type) -> None:
        """Log ``items`` as params or tags, ``TAG_LIMIT`` a call, removing each call's share once it
        succeeded."""
        while items:
            chunk = list(items.items())[:TAG_LIMIT]
            self.client.log_batch(run_id, **{field: [entity(k, v) for k, v in chunk]})
            for k, _ in chunk:
                del items[k]

    def _write_through_api(self, entry: dict) -> None:
        """Params, points, tags and end of an entry through MLflow's API, taking each call's share off
        the entry once it succeeds: a retry sends only the rest. A run whose data the store refuses is
        still ended."""
        run_id, params, points, tags = entry["run_id"], entry.get("params") or {}, entry["points"], entry["tags"]
        try:
            self._log_and_take(run_id, params, "params", Param)
            while points:
                self.client.log_batch(run_id, metrics=[Metric(*p) for p in points[:BATCH_LIMIT]])
                del points[:BATCH_LIMIT]
            self._log_and_take(run_id, tags, "tags", RunTag)
        except Exception as exc:
            if entry["end"] is not None and not _unreachable(exc):
                with contextlib.suppress(Exception):
                    self.client.set_terminated(run_id, status=entry["end"][0], end_time=entry["end"][1])
                entry["end"] = None
            raise
        if entry["end"] is not None:
            self.client.set_terminated(run_id, status=entry["end"][0], end_time=entry["end"][1])
            entry["end"] = None


class _SqlFastPath:
    """Points, tags and a run's end written into MLflow's own tables in one transaction.

    Why: ``log_batch`` builds an ORM object per point (~60 us each) and every call is a transaction;
    this inserts the same rows through SQLAlchemy Core (a few us each), with the table definitions of
    the installed MLflow, keeping ``latest_metrics`` as MLflow does (per key, the point with the largest
    (step, timestamp, value)). SQLite and PostgreSQL stores only, metric names MLflow accepts only;
    :meth:`write` returns False (nothing written) when it cannot take a batch, and the caller then goes
    through MLflow's API (which also deduplicates a point logged twice).
    """

    _SAFE_NAME = re.compile(r"^[\w\-./ :]{1,250}$")
    POINT_COLUMNS = ("run_uuid", "key", "value", "timestamp", "step", "is_nan")

    def __init__(self, engine, tables) -> None:
        import sqlalchemy as sa

        self.engine = engine
        self.metrics, self.latest, self.tags, self.runs, self.params = tables
        self._safe_keys: set[str] = set()
        # Built once: SQLAlchemy then reuses their compiled form (building one costs more than running it).
        # Points go through the driver's own executemany with plain tuples: ~1 us a row instead of ~5.
        quote = engine.dialect.identifier_preparer.quote
        mark = "?" if engine.dialect.name == "sqlite" else "%s"
        columns = ", ".join(quote(c) for c in self.POINT_COLUMNS)
        self.insert_points = f"INSERT INTO {quote(self.metrics.name)} ({columns}) VALUES ({', '.join([mark] * len(self.POINT_COLUMNS))})"
        self.upsert_latest = self._upsert(self.latest, ("value", "timestamp", "step", "is_nan"), newer=True)
        self.upsert_tags = self._upsert(self.tags, ("value",))
        self.end_run = sa.update(self.runs).where(self.runs.c.run_uuid == sa.bindparam("run_id")).values(
            status=sa.bindparam("status"), end_time=sa.bindparam("end_time")
        )

    @classmethod
    def for_client(cls, client: MlflowClient) -> "_SqlFastPath | None":
        try:
            from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlParam, SqlRun, SqlTag
            from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

            store = client._tracking_client.store
        except (ImportError, AttributeError):
            return None
        if not isinstance(store, SqlAlchemyStore) or store.engine.dialect.name not in ("sqlite", "postgresql"):
            return None
        return cls(store.engine, [m.__table__ for m in (SqlMetric, SqlLatestMetric, SqlTag, SqlRun, SqlParam)])

    @staticmethod
    def new_run(
        artifact_root: str, *, experiment_id: str, run_name: str, tags: Mapping[str, str], params: Mapping[str, str], start_ms: int
    ) -> dict:
        """The rows of a RUNNING run with its tags and params, as ``SqlAlchemyStore.create_run`` and
        ``log_batch`` would write them."""
        from mlflow.utils.uri import append_to_uri_path

        run_id = uuid.uuid4().hex
        run = {"run_uuid": run_id, "name": run_name, "source_type": "UNKNOWN", "source_name": "", "entry_point_name": "",
               "user_id": tags.get("mlflow.user", "unknown"), "status": "RUNNING", "start_time": start_ms,
               "end_time": None, "deleted_time": None, "source_version": "", "lifecycle_stage": "active",
               "experiment_id": int(experiment_id), "artifact_uri": append_to_uri_path(artifact_root, run_id, "artifacts")}  # fmt: skip
        tags = {"mlflow.runName": run_name, **tags}
        return {
            "run": run,
            "tags": [{"run_uuid": run_id, "key": k, "value": v[:8000]} for k, v in tags.items()],
            "params": [{"run_uuid": run_id, "key": k, "value": v[:6000]} for k, v in params.items()],
        }

    def write(self, run_id: str, points: Sequence[Point], tags: Mapping[str, str], end: tuple[str, int] | None, *, new_run: dict | None = None) -> bool:
        """One transaction: the run's rows first when ``new_run`` (from :meth:`new_run`), then the
        points, the tags, the end. False when nothing was written."""
        import sqlalchemy as sa

        rows, latest, safe = [], {}, self._safe_keys
        for key, value, timestamp, step in points:
            if key not in safe:
                if not self._SAFE_NAME.match(key):
                    return False
                safe.add(key)
            is_nan, value = (False, value) if -_MAX_FLOAT <= value <= _MAX_FLOAT else _sanitize(value)
            rows.append((run_id, key, value, timestamp, step, is_nan))
            best = latest.get(key)
            if best is None or (step, timestamp, value) > best[:3]:
                latest[key] = (step, timestamp, value, is_nan)
        newest = [{"run_uuid": run_id, "key": k, "step": s, "timestamp": t, "value": v, "is_nan": n} for k, (s, t, v, n) in latest.items()]
        try:
            with self.engine.begin() as conn:
                if new_run is not None:
                    conn.execute(sa.insert(self.runs), [new_run["run"]])
                    conn.execute(sa.insert(self.tags), new_run["tags"])
                    if new_run["params"]:
                        conn.execute(sa.insert(self.params), new_run["params"])
                if rows:
                    conn.exec_driver_sql(self.insert_points, rows)
                    conn.execute(self.upsert_latest, newest)
                if tags:
                    conn.execute(self.upsert_tags, [{"run_uuid": run_id, "key": k, "value": v} for k, v in tags.items()])
                if end is not None:
                    conn.execute(self.end_run, {"run_id": run_id, "status": end[0], "end_time": end[1]})
        except sa.exc.SQLAlchemyError as exc:  # rolled back: nothing of this batch was written
            logger.info("fast write of %d points to run %s fell back to MLflow's API: %s", len(rows), run_id, exc)
            return False
        return True

    def _upsert(self, table, columns: Sequence[str], *, newer: bool = False):
        """INSERT ... ON CONFLICT (key, run_uuid) DO UPDATE, only when newer (for latest_metrics)."""
        import sqlalchemy as sa

        if self.engine.dialect.name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert
        stmt = insert(table)
        new, old = stmt.excluded, table.c
        where = sa.tuple_(new.step, new.timestamp, new.value) > sa.tuple_(old.step, old.timestamp, old.value) if newer else None
        return stmt.on_conflict_do_update(index_elements=["key", "run_uuid"], set_={c: new[c] for c in columns}, where=where)


_MAX_FLOAT = sys.float_info.max


def _unreachable(exc: BaseException | None) -> bool:
    """Whether an error (or one it was raised from) says the store did not answer, as opposed to
    refusing what it was sent: connection errors and timeouts, a gateway's 502/503/504, an SQLite file
    that is locked or cannot be opened."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        kind = f"{type(exc).__module__}.{type(exc).__name__}"
        if isinstance(exc, (ConnectionError, TimeoutError)) or kind.startswith(("requests.exceptions.", "urllib3.exceptions.")):
            return True
        if kind in ("sqlalchemy.exc.OperationalError", "sqlite3.OperationalError") and re.search(r"locked|unable to open|disk I/O", str(exc)):
            return True
        status = getattr(exc, "get_http_status_code", None)
        if callable(status) and type(exc).__name__ == "RestException" and status() in (502, 503, 504):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class _Spool:
    """Held entries that outlived their writer: one pickle file per writer that stopped with some,
    in a folder per tracking store (``AUTOLR_SPOOL_DIR``, default ``~/.cache/autolr/unsent``). The
    next writer for the same store claims them first (renames them ``<name>.<pid>.claimed``, so that
    two writers starting together never both write one file; a dead claimant's files are claimed
    again), and removes a file once all of it is written."""

    def __init__(self, tracking_uri: str) -> None:
        import hashlib

        root = os.environ.get("AUTOLR_SPOOL_DIR")
        if not root:
            try:
                root = Path.home() / ".cache" / "autolr" / "unsent"
            except RuntimeError:  # no home directory
                import tempfile

                root = Path(tempfile.gettempdir()) / "autolr-unsent"
        identity = tracking_uri
        if tracking_uri.startswith("sqlite:///"):  # one store whatever the working directory
            identity = f"sqlite:///{_sqlite_path(tracking_uri).resolve()}"
        self.folder = Path(root) / hashlib.sha1(identity.encode()).hexdigest()[:16]
        self.files: dict[Path, set] = {}  # claimed file -> its keys not written yet

    def pending(self) -> bool:
        return bool(self._claimable())

    def _claimable(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        free = list(self.folder.glob("*.pkl"))
        for path in self.folder.glob("*.claimed"):
            pid = path.suffixes[-2][1:] if len(path.suffixes) >= 2 else ""
            if not (pid.isdigit() and _alive(int(pid))):
                free.append(path)
        return sorted(free)

    def load(self) -> list[tuple[Any, dict]]:
        out = []
        for path in self._claimable():
            claimed = self.folder / f"{path.name.split('.')[0]}.pkl.{os.getpid()}.claimed"
            try:
                path.rename(claimed)  # atomic: of two writers, one gets it
                entries = pickle.loads(claimed.read_bytes())
            except FileNotFoundError:
                continue
            except Exception:  # noqa: BLE001 - a truncated file: keep it for a person to look at
                logger.exception("could not read the unsent MLflow points in %s", path)
                continue
            keys = [("spool", claimed.name, i) for i in range(len(entries))]
            self.files[claimed] = set(keys)
            out += list(zip(keys, entries))
        return out

    def done(self, key: Any) -> None:
        for path, keys in list(self.files.items()):
            keys.discard(key)
            if not keys:
                path.unlink(missing_ok=True)
                del self.files[path]

    def save(self, held: Mapping[Any, dict]) -> Path:
        """All of ``held`` into one new file (replacing the claimed files it includes)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.pkl"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(pickle.dumps(list(held.values()), protocol=pickle.HIGHEST_PROTOCOL))
        tmp.replace(path)
        for old in self.files:
            old.unlink(missing_ok=True)
        self.files = {}
        return path


def _sanitize(value: float) -> tuple[bool, float]:
    """As MLflow stores values: NaN as 0 with is_nan, infinities as the largest finite floats."""
    if math.isnan(value):
        return True, 0.0
    if math.isinf(value):
        return False, math.copysign(sys.float_info.max, value)
    return False, value


def _serve(tracking_uri: str, inbox: "queue.Queue[tuple | None]", reply: Callable[[tuple], None]) -> None:
    """The writer loop: take what has arrived, apply it in order, and commit pending points once the
    oldest has waited ``WRITE_DELAY_S`` or ``WRITE_POINTS`` are pending (ends and barriers commit at once),
    with whatever else has arrived by then in the same transaction."""
    writer = _Writer(tracking_uri, reply)
    stopping = False
    try:
        while not stopping:
            batch = []
            with contextlib.suppress(queue.Empty):
                batch.append(inbox.get(timeout=writer.time_to_write()))
                while len(batch) < 10_000:
                    batch.append(inbox.get_nowait())
            for msg in batch:
                if msg is None:  # stop (or the training process is gone)
                    stopping = True
                    break
                try:
                    writer.apply(msg)
                except Exception:  # noqa: BLE001
                    logger.exception("the MLflow writer could not apply %r", msg[0])
            if stopping or writer.time_to_write() == 0.0:
                try:
                    writer.write_pending()
                    writer.retry_held()
                except Exception:  # noqa: BLE001 - keep the writer alive for the next batch
                    logger.exception("the MLflow writer could not write its pending points")
    finally:
        try:
            writer.kill_open_runs()
        finally:
            writer.finish()
            reply(("exit",))


class _ThreadLink:
    """The writer as a thread of this process (the SQLAlchemy work then competes for the GIL)."""

    def __init__(self, tracking_uri: str, on_reply: Callable[[tuple], None]) -> None:
        self.inbox: queue.Queue = queue.Queue()
        self.replied = threading.Event()

        def reply(msg: tuple) -> None:
            on_reply(msg)
            self.replied.set()

        self.thread = threading.Thread(target=_serve, args=(tracking_uri, self.inbox, reply), name="autolr-mlflow-writer", daemon=True)
        self.thread.start()

    def send(self, msg: tuple) -> None:
        self.inbox.put(msg)

    def poll(self, timeout_s: float) -> None:
        self.replied.wait(timeout_s)
        self.replied.clear()

    def close(self, timeout_s: float) -> None:
        self.inbox.put(None)
        self.thread.join(timeout_s)


def _writer_env() -> dict[str, str]:
    """The writer's environment: MLflow's HTTP client gives up on a dead server after seconds, not
    minutes (the writer holds and retries itself), and prints no "View run" line per trial run."""
    env = dict(os.environ)
    env.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    env.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    env.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    env["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    return env


def _redact(uri: str) -> str:
    """A URI as it may be printed: without a password."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


class _ProcessLink:
    """The writer as a child process: pickled messages to its stdin, length-prefixed replies from its
    stdout, both pipes non-blocking and served from the calling thread.

    Why no helper threads here: a thread woken to feed the pipe or read a reply needs the GIL, and the
    training thread hands the GIL back and forth at every torch op; under CPU contention each handoff
    can stall training for a scheduler tick. Writing a few kB to a pipe at each epoch end costs less.
    """

    def __init__(self, tracking_uri: str, on_reply: Callable[[tuple], None]) -> None:
        package_parent = str(Path(__file__).resolve().parent.parent)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER_BOOT, package_parent, tracking_uri],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
            env=_writer_env(),
            start_new_session=True,  # a Ctrl-C meant for training must not kill the writer mid-commit
        )
        self.to_writer, self.from_writer = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        os.set_blocking(self.to_writer, False)
        os.set_blocking(self.from_writer, False)
        self.on_reply = on_reply
        self.outgoing = bytearray()  # bytes the pipe has not taken yet
        self.incoming = bytearray()  # reply bytes not parsed yet
        self.alive = True

    def send(self, msg: tuple) -> None:
        if not self.alive:
            return
        self.outgoing += pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        self._pump()
        self._drain()

    def poll(self, timeout_s: float) -> None:
        """Move bytes both ways, waiting up to ``timeout_s`` for the writer to answer or take more."""
        if not self.alive:
            return
        with contextlib.suppress(OSError, ValueError):
            select.select([self.from_writer], [self.to_writer] if self.outgoing else [], [], timeout_s)
        self._pump()
        self._drain()

    def close(self, timeout_s: float) -> None:
        """Deliver what is pending, then EOF: the writer finishes, closes what is open, and exits."""
        deadline = time.monotonic() + timeout_s
        while self.outgoing and self.alive and time.monotonic() < deadline:
            self.poll(0.1)
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        while self.alive and time.monotonic() < deadline:
            self.poll(0.1)
        try:
            self.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.error("the MLflow writer (pid %d) did not stop within %.0f s; killing it", self.proc.pid, timeout_s)
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(OSError):
            self.proc.stdout.close()

    def _pump(self) -> None:
        while self.outgoing and self.alive:
            try:
                written = os.write(self.to_writer, self.outgoing)
            except BlockingIOError:  # the writer is busy; the rest goes with a later send or poll
                return
            except OSError:
                logger.error("the MLflow writer (pid %d) stopped reading; later points are lost", self.proc.pid)
                self._lost()
                return
            del self.outgoing[:written]

    def _drain(self) -> None:
        while self.alive:
            try:
                chunk = os.read(self.from_writer, 1 << 16)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                self._lost()
                break
            self.incoming += chunk
        while len(self.incoming) >= 4:
            size = int.from_bytes(self.incoming[:4], "big")
            if len(self.incoming) < 4 + size:
                break
            msg = pickle.loads(self.incoming[4 : 4 + size])
            del self.incoming[: 4 + size]
            self.on_reply(msg)

    def _lost(self) -> None:
        if self.alive:
            self.alive = False
            self.on_reply(("exit",))


# The writer process imports this module without running autolr/__init__.py, which imports torch: the
# writer never needs torch, and skipping it saves a second or more and ~200 MB per writer.
_WRITER_BOOT = (
    "import sys, types; pkg = types.ModuleType('autolr'); pkg.__path__ = [sys.argv[1] + '/autolr']; "
    "sys.modules['autolr'] = pkg; from autolr.tracking import _writer_main; _writer_main(sys.argv[2])"
)


def _writer_main(tracking_uri: str) -> None:
    """Entry point of the writer process: commands on stdin, replies on the original stdout."""
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print from a library goes to stderr, not into the reply stream
    logging.basicConfig(level=logging.WARNING, format="autolr writer %(levelname)s %(name)s: %(message)s")
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    _commit_without_fsync(tracking_uri)
    inbox: queue.Queue = queue.Queue()
    threading.Thread(target=_read_commands, args=(sys.stdin.buffer, inbox), daemon=True).start()

    gone = False

    def reply(msg: tuple) -> None:
        nonlocal gone
        if gone:
            return
        data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            replies.write(len(data).to_bytes(4, "big") + data)
            replies.flush()
        except OSError:  # the training process is gone: go on closing its runs, quietly
            gone = True

    _serve(tracking_uri, inbox, reply)


def _read_commands(pipe, inbox: queue.Queue) -> None:
    try:
        while True:
            inbox.put(pickle.load(pipe))
    except Exception:  # noqa: BLE001 - EOF: stopped, or the training process is gone
        inbox.put(None)


def _commit_without_fsync(tracking_uri: str) -> None:
    """WAL + synchronous=NORMAL on this process's SQLite connections (this process holds no others)."""
    if not tracking_uri.startswith("sqlite:"):
        return
    import sqlalchemy

    @sqlalchemy.event.listens_for(sqlalchemy.engine.Engine, "connect")
    def _pragmas(dbapi_connection, _record) -> None:
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")
        dbapi_connection.execute("PRAGMA busy_timeout=60000")  # other writers (workers, the UI) share the file
