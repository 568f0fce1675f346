"""A tracker that is off: the same methods as :class:`Tracker` and :class:`TrialRun`, doing nothing.

As Optuna's ``NullHeartbeatThread``: chosen once where tracking is switched off, so callers never ask
"is tracking on?". Imports no mlflow.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11

__all__ = ["NullTracker", "NullTrialRun"]


class NullTrialRun:
    """A trial run that records nothing; ``run_id`` is None."""

    run_id: str | None = None
    active = False

    def __init__(self, tracker: NullTracker | None = None, key: int = 0) -> None:
        self.tracker = tracker
        self.key = key

    def log_steps(self, first_step: int, values: Mapping[str, Sequence[float]]) -> None:
        pass

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        pass

    def flush(self) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def end(self, state: str, tags: Mapping[str, Any] | None = None) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        pass


class NullTracker:
    """A tracker that records nothing and reads back nothing: runs have no id (None), histories are
    empty, every wait returns at once."""

    tracking_uri: str | None = None
    experiment_name: str | None = None
    experiment_id: str | None = None
    study_uid: str | None = None
    store_down: str | None = None
    active = False  # nothing is recorded: whatever exists only to be recorded (plots) is not drawn

    def check_reachable(self, timeout_s: float = 5.0) -> None:
        pass

    @contextlib.contextmanager
    def parent_run(self, run_name: str, *, params: Mapping[str, Any], tags: Mapping[str, str], description: str = "") -> Iterator[str | None]:
        yield None

    def start_writer(self) -> None:
        pass

    def write_unsent(self) -> None:
        pass

    def reachable(self, timeout_s: float = 5.0) -> bool:
        return True

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        pass

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        pass

    def set_trials_view(self, metric: str, *, ascending: bool) -> None:
        pass

    def mark_exported(self, trial: int | None, lr_scale: float = 1.0) -> None:
        pass

    def log_artifact(self, run_id: str, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        pass

    def log_artifacts(self, run_id: str, local_dir: str | os.PathLike, artifact_path: str | None = None) -> None:
        pass

    def log_run(
        self,
        run_id: str,
        *,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        series: Mapping[str, Sequence[tuple[int, float]]] | None = None,
        description: str | None = None,
    ) -> None:
        pass

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        pass

    def log_range_test(
        self,
        parent_run_id: str | None,
        *,
        optimizer: str,
        params: Mapping[str, Any],
        curve: Mapping[str, Sequence[float]],
        artifacts: Sequence[str | os.PathLike] = (),
    ) -> str | None:
        return None

    def close_orphans(self, dead: Mapping[int, str]) -> int:
        return 0

    def metric_history(self, run_id: str, key: str) -> tuple[list[int], list[float]]:
        return [], []

    def run_tags(self, run_id: str) -> dict[str, str]:
        return {}

    def trial_runs(self, parent_run_id: str | None = None, *, status: str | None = None) -> dict[int, str]:
        return {}

    def trial_run(
        self,
        parent_run_id: str | None,
        trial_number: int,
        params: Mapping[str, Any],
        *,
        role: str = "trial",
        name: str | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> NullTrialRun:
        return NullTrialRun(self, trial_number)

    def open_writer(self, timeout_s: float = 30.0) -> bool:
        return True

    def flush(self, timeout_s: float = 300.0) -> bool:
        return True

    def close(self, timeout_s: float = 300.0) -> None:
        pass

    def run_id(self, key: int, timeout_s: float = 300.0) -> str | None:
        return None
