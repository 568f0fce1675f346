"""MLflow tracking: the one subpackage that imports mlflow.

One experiment per study, one parent run per invocation, one nested run per trial. A run always ends
in a final state: FINISHED (COMPLETE or PRUNED trials; ``autolr.state`` tells which), FAILED, or KILLED
(interrupted). :class:`NullTracker` is the tracker that is off (it imports no mlflow).

Why a writer process. MLflow's ``log_batch`` on its SQLAlchemy store spends ~50-70 us of CPU per metric
point (an ORM object each, the latest-metrics update) plus a transaction per call; a small model's
training step takes ~300-400 us and yields three points. Written in the training process, tracking
would cost more than training; written from a thread, it would compete for the GIL the training loop
holds between torch ops. So a trial run's SQL work all happens in one writer process per
:class:`Tracker`, and the training process only appends to a list:

1. the training process hands a trial's points to the writer once ``FLUSH_INTERVAL_S`` (0.1 s) has
   passed since the last hand-over, at the start of the last epoch and after the last step (so they are
   written while the last epoch and the final validation run), on prune and at the end of the trial:
   one pickled message (``_messages.py``) written to a non-blocking pipe from the training thread itself
   (``_links.py``: no helper thread to wake);
2. the writer (``_writer.py``) commits what has arrived as soon as its inbox is empty, everything that
   arrived together in one transaction; about 20 commits a second per trial at most keeps the SQLite
   file's write lock free for other workers. ``Tracker.flush()`` is a barrier;
3. the writer creates, tags and closes each trial run in order, closing it in the transaction that
   commits its last points: the training process never waits at the end of a trial;
4. on SQLite and PostgreSQL stores, and the MLflow versions it was verified on, the writer may insert
   rows into MLflow's own tables (``_fastpath.py``), falling back to ``log_batch`` for anything else;
5. the writer watches gradient health on the way (:class:`autolr.monitor.GradientMonitor`) and tags it;
6. if the training process dies, the writer sees its pipe close and ends every open run KILLED;
7. the training process keeps each message until the writer confirms it is in the store
   (``_supervisor.py``): a writer that dies is replaced and sent what it had not confirmed (a run it
   created is adopted, a point written twice is kept once); one that makes no progress for
   ``AUTOLR_TRACKING_WAIT_S`` while the training process waits (a server that hangs) is ended, and what
   it had not confirmed goes to the spool;
8. if the store cannot take writes (it does not answer, or its disk is full: ``_errors.py`` tells which
   errors mean that), the writer holds what it cannot write, per run and in order, tries again every
   ``RETRY_S`` and at every barrier, and at exit keeps what is still held in a versioned spool file
   (``_spool.py``) that the next writer writes first. Held points count as handled for ``flush`` and
   the backlog: training never waits for a dead store.

The writer runs in a session of its own, so a Ctrl-C in the terminal reaches the training process only;
the interrupted trial ends KILLED through the normal path.

Every name loads on first use (PEP 562): ``from autolr.tracking import NullTracker`` imports no mlflow,
and the writer process imports ``autolr.tracking._writer_process`` without the training side's modules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autolr._lazy import lazy_names

__all__ = [
    "DEFAULT_TRACKING_URI",
    "NullTracker",
    "NullTrialRun",
    "Tracker",
    "TrialRun",
    "artifact_root_for",
    "discard_warm_writers",
    "open_tracker",
    "prestart_writer",
    "read_trial_curves",
    "trials_view_links",
]

_LAZY = {
    "DEFAULT_TRACKING_URI": "autolr.config",
    "NullTracker": "autolr.tracking._null",
    "NullTrialRun": "autolr.tracking._null",
    "Tracker": "autolr.tracking._tracker",
    "TrialRun": "autolr.tracking._trial_run",
    "artifact_root_for": "autolr.tracking._store",
    "read_trial_curves": "autolr.tracking._read",
    "trials_view_links": "autolr.tracking._read",
}

if TYPE_CHECKING:
    from autolr.config import DEFAULT_TRACKING_URI
    from autolr.tracking._null import NullTracker, NullTrialRun
    from autolr.tracking._read import read_trial_curves, trials_view_links
    from autolr.tracking._store import artifact_root_for
    from autolr.tracking._tracker import Tracker
    from autolr.tracking._trial_run import TrialRun


def open_tracker(tracking_uri: str | None, experiment: str) -> Tracker | NullTracker:
    """The study's tracker, or a :class:`NullTracker` when tracking is off (``tracking_uri`` None):
    callers never ask which; mlflow is imported only when tracking is on."""
    if not tracking_uri:
        from autolr.tracking._null import NullTracker

        return NullTracker()
    from autolr.tracking._tracker import Tracker

    return Tracker(tracking_uri, experiment=experiment)


def prestart_writer(tracking_uri: str | None) -> None:
    """Start the MLflow writer process for ``tracking_uri`` ahead of need: it imports, then waits for
    work before it opens the store (see ``_warm.py``); the next :class:`Tracker` adopts it."""
    if tracking_uri:
        from autolr.tracking._warm import prestart

        prestart(tracking_uri)


def discard_warm_writers() -> None:
    """End the writers :func:`prestart_writer` started that no tracker adopted (they opened nothing)."""
    from autolr.tracking._warm import discard

    discard()


__getattr__, __dir__ = lazy_names(globals(), _LAZY)
