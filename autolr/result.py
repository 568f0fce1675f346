"""What :func:`autolr.tune` hands back: the study's trials, its confirmation, and the winner the
export names; and the same read from a study already stored (:func:`study_results`, ``autolr show``),
which imports no torch: reading a study trains nothing."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autolr import keys, store
from autolr.config import StudyConfig, load_study
from autolr.confirm import Confirmation, confirmation, confirmed_winner, exported_params
from autolr.store import FINISHED

__all__ = ["TuneResult", "study_config", "study_results", "summarize"]


@dataclasses.dataclass
class TuneResult:
    study_name: str
    storage: str
    tracking_uri: str | None
    direction: str
    metric: str
    best: FrozenTrial | None
    trials: list[FrozenTrial]
    parent_run_id: str | None = None
    confirmations: list[Confirmation] = dataclasses.field(default_factory=list)  # best candidate first
    trial_seconds: float = 0.0  # time this invocation's trials (and confirmation runs) trained, summed
    wall_seconds: float = 0.0  # from this invocation's first trial start to the end of tune()
    jobs: int = 1
    processes: int = 0  # how many processes trained this invocation's trials (with --jobs N, a worker may start after the last)
    stopped: str = ""  # why the search ended before its target, where it did: "grid" (every point ran) or "timeout"

    @property
    def in_trials(self) -> float | None:
        """The share of the time since the first trial started that went into trials (None: no trial ran)."""
        return self.trial_seconds / (self.wall_seconds * self.jobs) if self.wall_seconds > 0 else None

    @property
    def best_params(self) -> dict[str, Any] | None:
        """The best single-seed trial's flat configuration (``optimizer``, ``lr``, ``schedule``, ...)."""
        return None if self.best is None else dict(self.best.user_attrs[keys.PARAMS])

    @property
    def confirmed(self) -> Confirmation | None:
        """The confirmation's winner (best mean on fresh seeds); None while off, under way or all dropped."""
        return confirmed_winner(self.confirmations, self.direction)

    @property
    def winner(self) -> FrozenTrial | None:
        """The trial whose configuration ``autolr export`` names: the confirmed winner's, else
        :attr:`best` (for a step back, the trial it steps back from: :attr:`winner_params` has its rate)."""
        c = self.confirmed
        return self.best if c is None else next((t for t in self.trials if t.number == c.trial), self.best)

    @property
    def winner_params(self) -> dict[str, Any] | None:
        """The flat configuration ``autolr export`` names (``optimizer``, ``lr``, ``schedule``, ...)."""
        w = self.winner
        return None if w is None else exported_params(self.confirmed, w)

    def wait_for_plots(self, timeout_s: float = 120.0) -> bool:
        """Wait for this invocation's plots (drawn after it in a process of their own: see
        :mod:`autolr.plot_job`); True once they are on the parent run, False at once where none were
        started (``AUTOLR_PLOTS=0``, no tracking)."""
        from autolr import plot_job

        return plot_job.wait(self.parent_run_id, timeout_s)

    def short_of_target(self, target: int, *, timeout_s: float | None = None) -> str:
        """Why the study holds fewer finished trials than its ``target``, where it does: a grid with
        fewer points than the target (all of them ran, and were confirmed), or the timeout ran out
        (the next run goes on); "" otherwise."""
        done = sum(t.state in FINISHED for t in self.trials)
        if done >= target or not self.stopped:
            return ""
        if self.stopped == "grid":
            return f"study {self.study_name}: {done} of {target} trials finished, every point of the grid; a larger target runs none"
        ran_out = f"--timeout {timeout_s:g} s" if timeout_s else "the timeout"
        return f"study {self.study_name}: {done} of {target} trials finished: {ran_out} ran out; re-run the same command to go on (confirmation runs once the target is reached)"

    def timing(self) -> list[str]:
        """Where the wall time went: the share in trials, and workers that never trained."""
        lines = []
        if self.in_trials is not None:
            jobs = f" x {self.jobs} workers" if self.jobs > 1 else ""
            lines.append(f"time in trials: {self.trial_seconds:.1f} s of {self.wall_seconds:.1f} s{jobs} since the first trial started ({self.in_trials:.0%})")
        if 0 < self.processes < self.jobs:
            lines.append(f"{self.processes} of {self.jobs} workers trained: the others took longer to start (seconds: a new process "
                         "imports torch) than the trials took to run; --jobs pays off when trials take longer than that")  # fmt: skip
        return lines

    def __repr__(self) -> str:
        """One line a notebook cell shows (the dataclass's own listed every trial's internals):
        the study, its trials by state, and the configuration ``autolr export`` names, with its value."""
        states = ", ".join(f"{n} {s.name.lower()}" for s in TrialState if (n := self.count(s)))
        winner, c = self.winner_params, self.confirmed
        if winner is None:
            named = "no COMPLETE trial"
        else:
            shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in winner.items())
            if c is None:
                value = f"{self.best.value:.4g} (one seed)"
            else:
                spread = f" +- {c.std:.4g}" if c.std is not None else ""
                value = f"{c.mean:.4g}{spread} on {len(c.values)} fresh seed{'s' if len(c.values) != 1 else ''}"
            named = f"winner: {shown}, {self.metric} {value}"
        return f"TuneResult(study={self.study_name!r}, {len(self.trials)} trial{'s' if len(self.trials) != 1 else ''} ({states or 'none'}), {named}, parent_run_id={self.parent_run_id!r})"

    def count(self, state: TrialState) -> int:
        return sum(1 for t in self.trials if t.state == state)


def study_config(study: str | Path | StudyConfig, *, task: Callable[..., Any] | None, loop: Callable[..., Any] | None) -> StudyConfig:
    """A study file's path, or a :class:`StudyConfig`, as a config; ``task``/``loop``: a callable that
    stands in for its ``task:``/``loop:`` (as given to :func:`autolr.tune`)."""
    if not isinstance(study, StudyConfig):
        return load_study(study, task=task, loop=loop)
    if task is not None or loop is not None:
        return dataclasses.replace(study, task=task, loop=loop, task_args=study.task_args if task is not None else {})
    return study


def summarize(
    config: StudyConfig, storage_url: str, tracking_uri: str | None, parent_run_id: str | None = None, *, study: optuna.Study | None = None
) -> TuneResult:
    """What the storage holds of the study; ``study``: an open one to read through (its cache is kept)."""
    study = study if study is not None else store.load(config, storage_url)
    trials = study.get_trials(deepcopy=False)
    confirmations = confirmation(config, study, storage_url)
    return TuneResult(config.name, storage_url, tracking_uri, config.direction, config.metric, store.best_trial(study), trials, parent_run_id, confirmations)


def study_results(
    study: str | Path | StudyConfig, *, storage: str | None = None, task: Callable[..., Any] | None = None, loop: Callable[..., Any] | None = None
) -> TuneResult:
    """The trials of a study already in its storage (nothing is run or created). ``task``/``loop``:
    as given to :func:`autolr.tune`, for a study file that names neither."""
    config = study_config(study, task=task, loop=loop)
    return summarize(config, storage or store.default_storage_url(config), None)
