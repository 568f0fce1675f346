"""MLflow tracking: the one module that imports mlflow.

One experiment per study, one parent run per invocation, one nested run per trial. Points are
buffered and written with ``log_batch`` (never one call per point); a run always ends in a final state:
FINISHED (COMPLETE or PRUNED trials; ``autolr.state`` tells which), FAILED, or KILLED (interrupted).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import urllib.parse
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from autolr._filelock import file_lock
from autolr.errors import TrackingUnavailableError

__all__ = ["DEFAULT_TRACKING_URI", "Tracker", "TrialRun"]

logger = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
BATCH_LIMIT = 1000  # MLflow's log_batch accepts at most 1000 metrics per call
_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED", "KILLED": "KILLED"}


def artifact_root_for(tracking_uri: str) -> str | None:
    """Artifacts sit beside an SQLite store (``mlruns/mlflow.db`` -> ``mlruns/artifacts``)."""
    parsed = urllib.parse.urlparse(tracking_uri)
    if parsed.scheme != "sqlite":
        return None
    db_path = Path(tracking_uri[len("sqlite:///") :])
    return (db_path.parent.resolve() / "artifacts").as_uri()


def _open_client(tracking_uri: str) -> MlflowClient:
    """A client whose store exists; on SQLite the tables are created under a lock (two processes
    starting together would otherwise both try to create them, and one would fail)."""
    if not tracking_uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri=tracking_uri)
    db_path = Path(tracking_uri[len("sqlite:///") :])
    db_path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(f"{db_path}.lock"):
        client = MlflowClient(tracking_uri=tracking_uri)
        client.search_experiments(max_results=1)  # creates and migrates the tables
    return client


class Tracker:
    """Writes a study's runs to an MLflow tracking store."""

    def __init__(self, tracking_uri: str = DEFAULT_TRACKING_URI, *, experiment: str) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment
        self.client = _open_client(tracking_uri)
        self._experiment_id: str | None = None

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

    @contextlib.contextmanager
    def parent_run(self, run_name: str, *, params: Mapping[str, Any], tags: Mapping[str, str], description: str = "") -> Iterator[str]:
        """The invocation's run; ends KILLED on Ctrl-C, FAILED on an error, FINISHED otherwise."""
        all_tags = dict(tags)
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
            self.client.set_terminated(run_id, status=status)

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        items = [Param(k, _param_text(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # log_batch takes at most 100 params per call
            self.client.log_batch(run_id, params=items[i : i + 100])

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, run_id: str, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    def trial_run(self, parent_run_id: str | None, trial_number: int, params: Mapping[str, Any]) -> "TrialRun":
        tags = {"autolr.trial": str(trial_number), "autolr.state": "RUNNING"}
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=f"trial-{trial_number}", tags=tags)
        trial_run = TrialRun(self, run.info.run_id)
        self.log_params(run.info.run_id, params)
        return trial_run


    def close_orphans(self, dead_trials: Mapping[int, str]) -> int:
        """End runs left RUNNING by a process that died (kill -9, power loss); returns how many.

        A trial run is an orphan when Optuna has since failed its trial (``dead_trials``: trial number ->
        reason); a study run is one whose process (``autolr.host``/``autolr.pid`` tags) is gone.
        """
        closed = 0
        runs = self.client.search_runs([self.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000)
        for run in runs:
            tags = run.data.tags
            trial = tags.get("autolr.trial")
            if trial is not None and int(trial) in dead_trials:
                self.set_tags(run.info.run_id, {"autolr.state": "KILLED", "autolr.error": dead_trials[int(trial)]})
            elif tags.get("autolr.role") == "study" and not _process_alive(tags.get("autolr.host"), tags.get("autolr.pid")):
                self.set_tags(run.info.run_id, {"autolr.error": "the invocation's process died"})
            else:
                continue
            self.client.set_terminated(run.info.run_id, status="KILLED")
            closed += 1
        return closed


def _process_alive(host: str | None, pid: str | None) -> bool:
    import socket

    if host != socket.gethostname() or not pid:
        return True  # another machine's process: cannot tell, leave it
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _param_text(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


class TrialRun:
    """One trial's run: buffers points, writes them in batches, always ends in a final state.

    Use as a context manager; call :meth:`end` with the trial's state before leaving it, or the state is
    taken from how the block ended (KeyboardInterrupt -> KILLED, any other exception -> FAIL).
    """

    def __init__(self, tracker: Tracker, run_id: str) -> None:
        self.tracker = tracker
        self.run_id = run_id
        self._buffer: list[Metric] = []
        self._state: str | None = None

    def log_steps(self, first_step: int, values: Mapping[str, Sequence[float]]) -> None:
        now = int(time.time() * 1000)
        for key, series in values.items():
            self._buffer.extend(Metric(key, float(v), now, first_step + i) for i, v in enumerate(series))

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        now = int(time.time() * 1000)
        self._buffer.extend(Metric(k, float(v), now, step) for k, v in metrics.items())

    def flush(self) -> None:
        buffer, self._buffer = self._buffer, []
        for i in range(0, len(buffer), BATCH_LIMIT):
            self.tracker.client.log_batch(self.run_id, metrics=buffer[i : i + BATCH_LIMIT])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.tracker.set_tags(self.run_id, tags)

    def end(self, state: str, tags: Mapping[str, Any] | None = None) -> None:
        """Record the trial's final state (COMPLETE, PRUNED, FAIL or KILLED) and close the run."""
        if self._state is not None:
            return
        self._state = state
        try:
            self.flush()
            self.set_tags({"autolr.state": state, **(tags or {})})
        finally:
            self.tracker.client.set_terminated(self.run_id, status=_STATUS[state])

    def __enter__(self) -> "TrialRun":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.end("COMPLETE")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.end("KILLED", {"autolr.error": "interrupted"})
        else:
            self.end("FAIL", {"autolr.error": f"{exc_type.__name__}: {exc}"[:500]})
