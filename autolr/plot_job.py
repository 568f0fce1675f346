"""The study's plots, drawn after the invocation in a process of their own.

Drawing the five study plots and the best trials' ``curves.png`` costs seconds (matplotlib's import, a
figure each, the curves read back from MLflow): longer than a small study's trials. Nobody waits for
them: they are derived from what is already stored (the Optuna trials, the MLflow metrics), so once the
trials, the best configuration and the parent run's description are written, ``autolr tune`` starts
this job detached (a session of its own: a Ctrl-C in the terminal does not reach it) and exits; the
PNGs appear on the parent run a few seconds later. A job that fails or is killed loses nothing: the
next invocation draws every plot again from the stored data; a failure is tagged on the parent run
(``autolr.plots_error``), since the job has no terminal to print to.

The Python API starts the same job; :meth:`autolr.TuneResult.wait_for_plots` waits for it.

``AUTOLR_PLOTS=0`` in the environment starts no job (a CI run, a test suite: drawing costs seconds of
CPU, about as much as the quickstart's trials): that invocation's parent run gets no plots, nor its
trial runs ``curves.png``; the next invocation without it draws the study's plots, every trial in
them, on its own parent run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import subprocess
import sys
from typing import Any

__all__ = ["ENV", "PlotJob", "enabled", "main", "start", "wait"]

logger = logging.getLogger(__name__)

WAIT_S = 120.0  # what wait() allows a job by default: drawing takes seconds, a loaded machine more
ENV = "AUTOLR_PLOTS"  # "0" (or false, no, off): no plot job


def enabled() -> bool:
    """Whether the study's plots are drawn after an invocation (:data:`ENV`)."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


@dataclasses.dataclass(frozen=True)
class PlotJob:
    """What the job needs, all of it plain data (it crosses a process boundary as JSON)."""

    tracking_uri: str
    experiment: str
    study_uid: str | None
    parent_run_id: str
    storage_url: str
    study_name: str
    metric: str
    direction: str


_jobs: dict[str, subprocess.Popen] = {}  # parent run id -> this process's job for it


def start(job: PlotJob) -> None:
    """Start drawing ``job``'s plots in a detached process; returns at once."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "autolr.plot_job", json.dumps(dataclasses.asdict(job))],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,  # not the invocation's: a pipe reading `autolr tune` must end with it, not
        stderr=subprocess.DEVNULL,  # with the job (a failure is tagged on the parent run instead)
        start_new_session=True,
    )
    _jobs[job.parent_run_id] = proc


def wait(parent_run_id: str | None, timeout_s: float = WAIT_S) -> bool:
    """Wait for this process's plot job of ``parent_run_id``; True when it finished and drew them."""
    proc = _jobs.get(parent_run_id or "")
    if proc is None:
        return False
    try:
        return proc.wait(timeout_s) == 0
    except subprocess.TimeoutExpired:
        return False


def draw(job: PlotJob) -> None:
    """The study plots on the parent run and ``curves.png`` on the invocation's best trial runs."""
    from autolr import report, store
    from autolr.tracking import Tracker

    study = store.load_named(job.study_name, job.storage_url)
    tracker = Tracker(job.tracking_uri, experiment=job.experiment, writer="thread")
    tracker.study_uid = job.study_uid
    rows = [dict(store.trial_row(t), last_value=store.last_reported(t)) for t in study.get_trials(deepcopy=False)]
    importances, note = store.importances(study)
    report.draw_study_plots(tracker, job.parent_run_id, rows, metric=job.metric, direction=job.direction, importances=importances,
                            importance_note=note, range_tests=store.range_test_limits(study))  # fmt: skip
    sign = 1.0 if job.direction == "minimize" else -1.0
    ranking = {r["trial"]: sign * v for r in rows if (v := _value(r)) is not None and math.isfinite(v)}
    report.record_trial_curves(tracker, job.parent_run_id, metric=job.metric, ranking=ranking)


def _value(row: dict[str, Any]) -> float | None:
    return row["value"] if row["value"] is not None else row["last_value"]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    job = PlotJob(**json.loads(args[0]))
    logging.basicConfig(level=logging.WARNING, format="autolr: %(message)s")
    for name in ("optuna", "alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        draw(job)
    except Exception as exc:  # noqa: BLE001 - the next invocation draws them again
        why = f"could not draw the plots ({type(exc).__name__}: {exc}); the next `autolr tune` of the study draws them again"
        logger.error("study %r, run %s: %s", job.study_name, job.parent_run_id, why)
        _tag_failure(job, why)
        return 1
    return 0


def _tag_failure(job: PlotJob, why: str) -> None:
    """Say it where the plots were to be: the parent run's ``autolr.plots_error`` tag (best effort)."""
    from autolr import keys
    from autolr.tracking import Tracker

    try:
        Tracker(job.tracking_uri, experiment=job.experiment, writer="thread").set_tags(job.parent_run_id, {keys.PLOTS_ERROR: why[:500]})
    except Exception:  # noqa: BLE001 - the store itself is what failed
        logger.exception("could not tag the failure on run %s either", job.parent_run_id)


if __name__ == "__main__":
    from autolr.workers import exit_without_teardown

    exit_without_teardown(main())  # the plots are logged: freeing matplotlib's, torch's and MLflow's objects would only hold a core
