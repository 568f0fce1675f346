"""The public face of tracking: :class:`Tracker`, a study's runs in one MLflow store.

The parent run and other rare writes go straight through ``Tracker.client``; trial runs go through the
writer (``_writer.py``), as typed messages (``_messages.py``) over a link (``_links.py``).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import itertools
import json
import logging
import math
import os
import socket
import urllib.request
import uuid
import weakref
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID as PARENT
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE as NOTE

from autolr import keys
from autolr.config import DEFAULT_TRACKING_URI
from autolr.errors import TrackingUnavailableError
from autolr.tracking._errors import StoreFullError, describe, disk_full, quiet_store_errors, unreachable
from autolr.tracking._exported import mark_exported
from autolr.tracking._messages import CreateRun, TerminateRun, ToWriter, TrialState
from autolr.tracking._spool import Spool, pid_alive
from autolr.tracking._store import artifact_root_for, known_artifact_uri, open_client
from autolr.tracking._supervisor import WriterSupervisor
from autolr.tracking._trial_run import ERROR_LIMIT, TrialRun, now_ms
from autolr.tracking._writer import BATCH_LIMIT, TAG_LIMIT

__all__ = ["StoreFullError", "Tracker", "TrialRun"]

logger = logging.getLogger(__name__)
quiet_store_errors()  # a full disk or a store that does not answer is said in one line, not one traceback per call

WRITER_MODES = ("process", "thread")
TRAINING_KIND = {keys.EXPERIMENT_KIND: keys.EXPERIMENT_KIND_TRAINING}


def _param_text(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _full_disk_in_one_line(method):
    """A write of this process that meets a full disk raises :class:`StoreFullError` (one line naming
    the store and its disk), and the tracker counts the store as down from then on."""

    @functools.wraps(method)
    def wrapper(self: Tracker, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except StoreFullError:
            raise
        except Exception as exc:
            if not disk_full(exc):
                raise
            self.store_down = self.store_down or describe(exc)
            raise StoreFullError(self.tracking_uri, exc) from None

    return wrapper


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
        self.client = open_client(tracking_uri)
        self._experiment_id: str | None = None
        self._experiment_tags: dict[str, str] = {}  # as the experiment was looked up (tags this process set since included)
        self._writer = WriterSupervisor(tracking_uri, mode=writer, fast_path=fast_path)
        self._keys = itertools.count()
        self._pid = os.getpid()  # a forked child must not drive its parent's writer

    @property
    def store_down(self) -> str | None:
        """Why the store cannot take writes (it does not answer, its disk is full), while it cannot."""
        return self._writer.store_down

    @store_down.setter
    def store_down(self, reason: str | None) -> None:
        self._writer.store_down = reason

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
            self._experiment_id, self._experiment_tags = exp.experiment_id, dict(exp.tags)
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
        run_id = self._create_run(run_name, all_tags)
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

    @_full_disk_in_one_line
    def _create_run(self, run_name: str, tags: Mapping[str, str]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        known_artifact_uri(run.info.run_id, run.info.artifact_uri, self.tracking_uri)
        return run.info.run_id

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
                self.store_down = describe(exc)
        self._send(TerminateRun(run_id, status, end_ms))

    def start_writer(self) -> None:
        """Start the writer now rather than with the first trial run (its start-up, imports, then overlaps
        other work); it writes any spooled points first."""
        if self._writer.link is None:
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
        self.log_run(run_id, params=params)

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        self.log_run(run_id, tags=tags)

    @_full_disk_in_one_line
    def set_trials_view(self, metric: str, *, ascending: bool) -> None:
        """The experiment's trials view (:data:`autolr.keys.TRIALS_VIEW`): every run flat, sorted by the
        objective ``metric``, with it, the main parameters, the state, the prune reason, and what each
        run is (``autolr.exported``: the runs of what the export names; ``autolr.role``: trial or
        confirm; ``autolr.source``: sweep for the schedule sweep's trials, range_test for the range
        test's suggestion) as columns: by its name a sweep trial looks like any trial."""
        column = f"metrics.`{metric}`"
        shown = [
            column,
            *(f"params.`{p}`" for p in ("optimizer", "lr", "schedule", "warmup")),
            *(f"tags.`{t}`" for t in (keys.EXPORTED, keys.STATE, keys.PRUNE_REASON, keys.ROLE, keys.SOURCE)),
        ]
        state = {"searchFilter": "", "orderByKey": column, "orderByAsc": ascending, "startTime": "ALL", "lifecycleFilter": "Active", "selectedColumns": shown}
        text, experiment_id = json.dumps(state), self.experiment_id
        if self._experiment_tags.get(keys.TRIALS_VIEW_TAG) != text:  # an experiment already showing it is not written again
            self.client.set_experiment_tag(experiment_id, keys.TRIALS_VIEW_TAG, text)
            self._experiment_tags[keys.TRIALS_VIEW_TAG] = text

    @_full_disk_in_one_line
    def mark_exported(self, trial: int | None, lr_scale: float = 1.0) -> None:
        """The tag ``autolr.exported`` on the runs of what the export names, and on no other
        (:func:`autolr.tracking._exported.mark_exported`)."""
        mark_exported(self.client, self.experiment_id, trial, lr_scale, study_uid=self.study_uid)

    @_full_disk_in_one_line
    def log_artifact(self, run_id: str, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    @_full_disk_in_one_line
    def log_artifacts(self, run_id: str, local_dir: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)

    @_full_disk_in_one_line
    def log_run(
        self,
        run_id: str,
        *,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        series: Mapping[str, Sequence[tuple[int, float]]] | None = None,
        description: str | None = None,
    ) -> None:
        """Params, tags, metric series (each as ``(step, value)`` points, non-finite ones left out) and
        the description (markdown, shown in the MLflow UI) of a run in as few ``log_batch`` calls as MLflow's limits allow: one,
        for what a run's end writes (each call is a transaction that reads the run first: ~4 ms on
        SQLite here)."""
        if description is not None:
            tags = {**(tags or {}), NOTE: description}
        now = now_ms()
        metrics = [Metric(key, float(v), now, step) for key, pairs in (series or {}).items() for step, v in pairs if math.isfinite(v)]
        param_items = [Param(k, _param_text(v)) for k, v in (params or {}).items()]
        tag_items = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        while metrics or param_items or tag_items:
            some_params, some_tags = param_items[:TAG_LIMIT], tag_items[:TAG_LIMIT]
            room = BATCH_LIMIT - len(some_params) - len(some_tags)
            self.client.log_batch(run_id, metrics=metrics[:room], params=some_params, tags=some_tags)
            metrics, param_items, tag_items = metrics[room:], param_items[TAG_LIMIT:], tag_items[TAG_LIMIT:]

    @_full_disk_in_one_line
    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    @_full_disk_in_one_line
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
        run_id = self._create_run(f"range-test-{optimizer}", tags)
        status = "FAILED"
        try:
            self.log_run(run_id, params=params, series={key: list(enumerate(values)) for key, values in curve.items()})
            for path in artifacts:
                self.log_artifact(run_id, path)
            status = "FINISHED"
        finally:
            self.client.set_terminated(run_id, status=status)
        return run_id

    def close_orphans(self, dead: Mapping[int, str]) -> int:
        """Close what died with its process: trial runs still RUNNING whose trial (number -> reason) is
        in ``dead`` end FAILED; invocation runs still RUNNING whose process (``autolr.pid`` on this host)
        is gone end KILLED, and so do runs still RUNNING under them. (A trial run of a killed process is
        normally closed by its writer.) Returns how many runs were closed; on a full disk, says so in one
        line and closes them another time."""
        try:
            return self._close_orphans(dead)
        except StoreFullError as exc:
            logger.error("%s; runs left RUNNING by processes that died are closed by a later invocation", exc)
            return 0

    @_full_disk_in_one_line
    def _close_orphans(self, dead: Mapping[int, str]) -> int:
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
        return closed + self._close_orphaned_children()

    def _close_orphaned_children(self) -> int:
        """Runs still RUNNING under an invocation run that is not (their end could be neither written
        nor kept: a store and spool on one full disk) end KILLED."""
        parents: dict[str, str] = {}
        closed = 0
        for run in self.client.search_runs([self.experiment_id], "attributes.status = 'RUNNING'", max_results=1000):
            parent = run.data.tags.get(PARENT)
            if not parent or (self.study_uid and run.data.tags.get(keys.STUDY_UID, self.study_uid) != self.study_uid):
                continue
            if parent not in parents:
                parents[parent] = self.client.get_run(parent).info.status
            if parents[parent] != "RUNNING":
                self.set_tags(run.info.run_id, {keys.STATE: TrialState.FAIL.value, keys.ERROR: "its invocation ended without closing it"})
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
        self._send(CreateRun(key, self.experiment_id, name or f"trial-{trial_number}", tags, texts, now_ms(), run_uuid=uuid.uuid4().hex))
        return TrialRun(self, key)

    def open_writer(self, timeout_s: float = 30.0) -> bool:
        """Start the writer now and wait until it has opened the store (False after ``timeout_s``:
        training goes on, and the writer catches up or is given up as usual; 0: do not wait).

        ``tune`` calls it without waiting once the preflight passed: the writer opens its store on the
        second core while this process opens its own stores, instead of after the first trial's first
        points (a 1-epoch trial's invocation then waited ~0.5 s at its end). A ``--jobs`` worker waits:
        otherwise the writer's start (its store's engine and tables, on top of its imports) runs during
        its first trial, on a core the other workers' trials need (measured with ``bench/scaling.py``:
        the first trials the two workers shared took ~1.9 s instead of ~1 s)."""
        return self._writer.barrier(timeout_s)  # a barrier, not a bare start: a warm writer opens its store on its first message

    def flush(self, timeout_s: float = 300.0) -> bool:
        """Wait until every point sent so far is committed and every ended trial run is closed (or,
        while the store does not answer, held for a retry: see :attr:`store_down`). A writer that dies
        meanwhile is replaced; one that makes no progress for ``AUTOLR_TRACKING_WAIT_S`` (its store hangs)
        is given up, and what it had not written goes to the spool (``_supervisor.py``).

        Returns False (and logs why) when the writer did not get there within ``timeout_s``.
        """
        if self._writer.link is None:
            return True
        if self._writer.barrier(timeout_s):
            return True
        logger.warning("the MLflow writer did not confirm within %.0f s; some points may not be written yet", timeout_s)
        return False

    def close(self, timeout_s: float = 300.0) -> None:
        """Write everything (or spool it), stop the writer, and end any run the writer could not close."""
        if self._writer.link is None or os.getpid() != self._pid:
            return
        try:
            self.flush(timeout_s)
        finally:
            _LIVE.discard(self)
            self._writer.close()
            self._repair()

    def run_id(self, key: int, timeout_s: float = 300.0) -> str | None:
        """The MLflow run id of a trial run (a barrier: the writer creates runs with their first points)."""
        if key not in self._writer.run_ids:
            self.flush(timeout_s)
        return self._writer.run_ids.get(key)

    def _send(self, msg: ToWriter) -> None:
        if self._writer.link is None:
            self._start_writer()
        self._writer.send(msg)

    def _start_writer(self) -> None:
        self._writer.start()
        _LIVE.add(self)

    def _repair(self) -> None:
        """Runs a writer created but no writer confirmed closed: end them from here (while the store
        answers; otherwise the next invocation closes them)."""
        writer = self._writer
        for key, run_id in list(writer.run_ids.items()):
            if run_id is None or key in writer.closed_keys or self.store_down is not None:
                continue
            state = writer.ended.get(key, TrialState.KILLED)
            logger.error("the MLflow writer stopped before closing run %s; ending it %s from here", run_id, state.value)
            with contextlib.suppress(Exception):
                self.client.set_tag(run_id, keys.STATE, state.value)
                self.client.set_terminated(run_id, status=state.run_status)
            writer.closed_keys.add(key)


_LIVE: weakref.WeakSet[Tracker] = weakref.WeakSet()


@atexit.register
def _close_live_trackers() -> None:
    for tracker in list(_LIVE):
        tracker.close(timeout_s=60.0)
