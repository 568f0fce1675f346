"""The public face of tracking: :class:`Tracker`, a study's runs in one MLflow store.

The parent run and other rare writes go straight through ``Tracker.client``; trial runs go through the
writer (``_writer.py``), as typed messages (``_messages.py``) over a link (``_links.py``).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import logging
import math
import os
import socket
import threading
import time
import urllib.request
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID as PARENT
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE as NOTE

from autolr import keys
from autolr.config import DEFAULT_TRACKING_URI
from autolr.errors import TrackingUnavailableError
from autolr.tracking._errors import redact, unreachable
from autolr.tracking._links import ProcessLink, ThreadLink
from autolr.tracking._messages import (
    Barrier,
    BarrierDone,
    CreateRun,
    EndRun,
    FromWriter,
    LogPoints,
    PointsUnsent,
    PointsWritten,
    RunClosed,
    RunCreated,
    StoreDown,
    StoreUp,
    TerminateRun,
    ToWriter,
    TrialState,
    WriterExited,
)
from autolr.tracking._spool import Spool, pid_alive
from autolr.tracking._store import artifact_root_for, open_client
from autolr.tracking._trial_run import ERROR_LIMIT, TrialRun, now_ms
from autolr.tracking._writer import BATCH_LIMIT, RETRY_S, TAG_LIMIT

__all__ = ["Tracker", "TrialRun"]

logger = logging.getLogger(__name__)

MAX_BACKLOG_POINTS = 1_000_000  # beyond this many points not handled yet, training waits for the writer
WRITER_MODES = ("process", "thread")
TRAINING_KIND = {keys.EXPERIMENT_KIND: keys.EXPERIMENT_KIND_TRAINING}


def _param_text(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


class Tracker:
    """Writes a study's runs to an MLflow tracking store.

    Args:
        tracking_uri: any MLflow tracking URI; ``sqlite:///`` stores get WAL mode and artifacts beside them.
        experiment: the experiment's name (the study's).
        writer: ``"process"`` (default: the SQLAlchemy work leaves the training process) or ``"thread"``.
        fast_path: let the writer insert rows into MLflow's tables directly where it was verified
            (``_fastpath.py``); False: always MLflow's public ``log_batch``.
    """

    def __init__(self, tracking_uri: str = DEFAULT_TRACKING_URI, *, experiment: str, writer: str = "process", fast_path: bool = True) -> None:
        if writer not in WRITER_MODES:
            raise ValueError(f"writer: expected one of {WRITER_MODES}, got {writer!r}")
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment
        self.writer = writer
        self.fast_path = fast_path
        self.active = True  # it records (a NullTracker does not)
        self.study_uid: str | None = None  # set by the study: its runs are tagged, and only they are read back
        self.store_down: str | None = None  # why the store stopped answering, while it does not
        self.client = open_client(tracking_uri)
        self._experiment_id: str | None = None
        self._link: ProcessLink | ThreadLink | None = None
        self._keys = itertools.count()
        self._tokens = itertools.count()
        self._cond = threading.Condition()
        self._run_ids: dict[int, str | None] = {}
        self._ended: dict[int, TrialState] = {}  # key -> final state, as sent
        self._closed_keys: set[int] = set()  # confirmed closed by the writer
        self._done: set[int] = set()
        self._sent_points = 0
        self._written_points = 0
        self._writer_alive = False
        self._warned_backlog = False
        self._pid = os.getpid()  # a forked child must not drive its parent's writer
        self._on_reply_of: dict[type, Callable[[Any], None]] = {
            RunCreated: lambda m: self._run_ids.__setitem__(m.key, m.run_id),
            RunClosed: lambda m: self._closed_keys.add(m.key),
            PointsWritten: self._points_written,
            BarrierDone: lambda m: self._done.add(m.token),
            WriterExited: self._writer_exited,
            StoreDown: self._store_went_down,
            StoreUp: self._store_came_back,
            PointsUnsent: self._points_unsent,
        }

    def __getstate__(self) -> dict[str, Any]:  # worker processes rebuild a tracker from its address
        state = {"tracking_uri": self.tracking_uri, "experiment": self.experiment_name, "writer": self.writer}
        return {**state, "fast_path": self.fast_path, "study_uid": self.study_uid}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["tracking_uri"], experiment=state["experiment"], writer=state["writer"], fast_path=state.get("fast_path", True))
        self.study_uid = state.get("study_uid")

    def check_reachable(self, timeout_s: float = 5.0) -> None:
        """Fail fast, with the fix in the message, when an HTTP tracking server does not answer."""
        if not self.tracking_uri.startswith(("http://", "https://")):
            return
        url = self.tracking_uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s):  # noqa: S310 - an http(s) tracking URI, checked above
                return
        except Exception as exc:  # noqa: BLE001
            raise TrackingUnavailableError(
                f"--tracking-uri {self.tracking_uri}: no MLflow server answered ({exc}); start it "
                f"(mlflow server --host 127.0.0.1) or use the embedded store ({DEFAULT_TRACKING_URI})"
            ) from None

    @property
    def experiment_id(self) -> str:
        """The study's experiment, created on first use, and marked a model-training experiment (also one
        created earlier, without the mark), so MLflow's UI opens it on its runs, not its traces."""
        if self._experiment_id is None:
            exp = self.client.get_experiment_by_name(self.experiment_name)
            if exp is None:
                try:
                    self.client.create_experiment(self.experiment_name, artifact_location=artifact_root_for(self.tracking_uri), tags=TRAINING_KIND)
                except mlflow.exceptions.MlflowException:  # another worker created it first
                    pass
                exp = self.client.get_experiment_by_name(self.experiment_name)
            if keys.EXPERIMENT_KIND not in exp.tags:  # a kind someone chose on purpose is kept
                self.client.set_experiment_tag(exp.experiment_id, keys.EXPERIMENT_KIND, keys.EXPERIMENT_KIND_TRAINING)
            self._experiment_id = exp.experiment_id
        return self._experiment_id

    # --- the parent run and other rare writes: synchronous -------------------------------------------

    @contextlib.contextmanager
    def parent_run(self, run_name: str, *, params: Mapping[str, Any], tags: Mapping[str, str], description: str = "") -> Iterator[str]:
        """The invocation's run; ends KILLED on Ctrl-C, FAILED on an error, FINISHED otherwise.

        Before it ends, every trial run sent to the writer is written and closed (or held, with the
        parent's own end, while the store does not answer).
        """
        all_tags = {**tags, keys.PID: str(os.getpid()), keys.HOST: socket.gethostname()}  # see close_orphans
        if self.study_uid:
            all_tags[keys.STUDY_UID] = self.study_uid
        if description:
            all_tags[NOTE] = description
        run_id = self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags).info.run_id
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
        end_ms = now_ms()
        if self.store_down is None and self.reachable():
            try:
                self.client.set_terminated(run_id, status=status, end_time=end_ms)
                return
            except Exception as exc:
                if not unreachable(exc):
                    raise
                self.store_down = str(exc)
        self._send(TerminateRun(run_id, status, end_ms))

    def start_writer(self) -> None:
        """Start the writer now rather than with the first trial run (its start-up, imports, then overlaps
        other work); it writes any spooled points first."""
        if self._link is None:
            self._start_writer()

    def write_unsent(self) -> None:
        """Write what an earlier writer for this store had to keep when the store stopped answering."""
        if Spool(self.tracking_uri).pending():
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

    def set_trials_view(self, metric: str, *, ascending: bool) -> None:
        """The experiment's trials view (:data:`autolr.keys.TRIALS_VIEW`): every run flat, sorted by the
        objective ``metric``, with it and the main parameters as columns."""
        column = f"metrics.`{metric}`"
        shown = [column, *(f"params.`{p}`" for p in ("optimizer", "lr", "schedule", "warmup")), f"tags.`{keys.STATE}`", f"tags.`{keys.PRUNE_REASON}`"]
        state = {"searchFilter": "", "orderByKey": column, "orderByAsc": ascending, "startTime": "ALL", "lifecycleFilter": "Active", "selectedColumns": shown}
        self.client.set_experiment_tag(self.experiment_id, keys.TRIALS_VIEW_TAG, json.dumps(state))

    def set_description(self, run_id: str, text: str) -> None:
        """The run's description (markdown) in the MLflow UI."""
        self.client.set_tag(run_id, NOTE, text)

    def log_artifact(self, run_id: str, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def log_artifacts(self, run_id: str, local_dir: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)

    def log_series(self, run_id: str, series: Mapping[str, Sequence[tuple[int, float]]]) -> None:
        """Metrics of a run written at once, each as ``(step, value)`` points (non-finite ones left out)."""
        now = now_ms()
        points = [Metric(key, float(v), now, step) for key, pairs in series.items() for step, v in pairs if math.isfinite(v)]
        for i in range(0, len(points), BATCH_LIMIT):
            self.client.log_batch(run_id, metrics=points[i : i + BATCH_LIMIT])

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
        tags = {keys.ROLE: keys.ROLE_RANGE_TEST, keys.OPTIMIZER: optimizer}
        if parent_run_id:
            tags[PARENT] = parent_run_id
        run_id = self.client.create_run(self.experiment_id, run_name=f"range-test-{optimizer}", tags=tags).info.run_id
        status = "FAILED"
        try:
            self.log_params(run_id, params)
            self.log_series(run_id, {key: list(enumerate(values)) for key, values in curve.items()})
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
                self.set_tags(run_id, {keys.STATE: TrialState.FAIL.value, keys.ERROR: dead[number][:ERROR_LIMIT]})
                self.client.set_terminated(run_id, status="FAILED")
                closed += 1
        query = f"tags.`{keys.ROLE}` = '{keys.ROLE_STUDY}' and attributes.status = 'RUNNING'"
        for run in self.client.search_runs([self.experiment_id], query, max_results=1000):
            tags = run.data.tags
            if tags.get(keys.HOST) == socket.gethostname() and not pid_alive(int(tags.get(keys.PID, "0"))):
                self.set_tags(run.info.run_id, {keys.ERROR: "the invocation's process ended without closing its run"})
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
        query = f"tags.`{keys.ROLE}` = '{keys.ROLE_TRIAL}'"
        if parent_run_id:
            query += f" and tags.`{PARENT}` = '{parent_run_id}'"
        if status:
            query += f" and attributes.status = '{status}'"
        runs: dict[int, tuple[int, str]] = {}
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], query, max_results=1000, page_token=token)
            for run in page:
                if self.study_uid and run.data.tags.get(keys.STUDY_UID, self.study_uid) != self.study_uid:
                    continue  # another storage's study of the same name (runs from before uids count)
                number = int(run.data.tags.get(keys.TRIAL, -1))
                if number not in runs or run.info.start_time > runs[number][0]:
                    runs[number] = (run.info.start_time, run.info.run_id)
            token = page.token
            if not token:
                return {number: run_id for number, (_, run_id) in runs.items()}

    # --- trial runs: through the writer ----------------------------------------------------------------

    def trial_run(
        self,
        parent_run_id: str | None,
        trial_number: int,
        params: Mapping[str, Any],
        *,
        role: str = keys.ROLE_TRIAL,
        name: str | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> TrialRun:
        """A new trial run; the writer creates it with its first points (nothing here waits). ``role``,
        ``name`` and ``tags`` tell a confirmation run from a search trial."""
        tags = {**{k: str(v) for k, v in (tags or {}).items()}, keys.STATE: "RUNNING", keys.ROLE: role}
        if role == keys.ROLE_TRIAL:  # a confirmation run is not a search trial: filters on autolr.trial never find it
            tags[keys.TRIAL] = str(trial_number)
        if self.study_uid:
            tags[keys.STUDY_UID] = self.study_uid
        if parent_run_id:
            tags[PARENT] = parent_run_id
        key = next(self._keys)
        texts = {k: _param_text(v) for k, v in params.items()}
        self._send(CreateRun(key, self.experiment_id, name or f"trial-{trial_number}", tags, texts, now_ms()))
        return TrialRun(self, key)

    def flush(self, timeout_s: float = 300.0) -> bool:
        """Wait until every point sent so far is committed and every ended trial run is closed (or,
        while the store does not answer, held for a retry: see :attr:`store_down`).

        Returns False (and logs why) when the writer did not get there within ``timeout_s``.
        """
        if self._link is None:
            return True
        token = next(self._tokens)
        self._send(Barrier(token))
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

    def _send(self, msg: ToWriter) -> None:
        if self._link is None:
            self._start_writer()
        if isinstance(msg, LogPoints):
            self._sent_points += msg.points
            if self._sent_points - self._written_points > MAX_BACKLOG_POINTS:
                self._wait_for_backlog()
        elif isinstance(msg, EndRun):
            self._ended[msg.key] = msg.state
        self._link.send(msg)

    def _wait_for_backlog(self) -> None:
        if not self._warned_backlog:
            self._warned_backlog = True
            logger.warning("the MLflow writer is %d points behind; training waits for it", self._sent_points - self._written_points)
        self._wait(lambda: self._sent_points - self._written_points <= MAX_BACKLOG_POINTS // 2, None)

    def _start_writer(self) -> None:
        link_class = ProcessLink if self.writer == "process" else ThreadLink
        try:
            self._link = link_class(self.tracking_uri, self._on_reply, fast_path=self.fast_path)
        except OSError as exc:  # no subprocess allowed here: the thread still keeps the store work batched
            logger.warning("could not start the MLflow writer process (%s); writing from a thread", exc)
            self._link = ThreadLink(self.tracking_uri, self._on_reply, fast_path=self.fast_path)
        self._writer_alive = True
        _LIVE.add(self)

    def _on_reply(self, msg: FromWriter) -> None:
        with self._cond:
            self._on_reply_of[type(msg)](msg)
            self._cond.notify_all()

    def _points_written(self, msg: PointsWritten) -> None:
        self._written_points += msg.points

    def _writer_exited(self, _msg: WriterExited) -> None:
        self._writer_alive = False

    def _store_went_down(self, msg: StoreDown) -> None:
        self.store_down = msg.reason
        logger.error(
            "the MLflow tracking store %s stopped answering (%s); training goes on, and the points "
            "are held and sent again every %.0f s", redact(self.tracking_uri), msg.reason, RETRY_S,
        )  # fmt: skip

    def _store_came_back(self, _msg: StoreUp) -> None:
        self.store_down = None
        logger.warning("the MLflow tracking store %s answers again; the held points are written", redact(self.tracking_uri))

    def _points_unsent(self, msg: PointsUnsent) -> None:
        logger.error(
            "%d points of %d MLflow runs could not be written to %s; they are kept in %s, and the next "
            "autolr run that reaches the store writes them", msg.points, msg.runs, redact(self.tracking_uri), msg.kept_in,
        )  # fmt: skip

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
            state = self._ended.get(key, TrialState.KILLED)
            logger.error("the MLflow writer stopped before closing run %s; ending it %s from here", run_id, state.value)
            with contextlib.suppress(Exception):
                self.client.set_tag(run_id, keys.STATE, state.value)
                self.client.set_terminated(run_id, status=state.run_status)
            self._closed_keys.add(key)


_LIVE: weakref.WeakSet[Tracker] = weakref.WeakSet()


@atexit.register
def _close_live_trackers() -> None:
    for tracker in list(_LIVE):
        tracker.close(timeout_s=60.0)
