"""What :func:`autolr.tune` hands back: the study's trials, its confirmation, and the winner the
export names."""

from __future__ import annotations

import dataclasses
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from autolr import keys
from autolr.confirm import Confirmation, confirmed_winner, exported_params

__all__ = ["TuneResult"]


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
        :mod:`autolr.plot_job`); True once they are on the parent run."""
        from autolr import plot_job

        return plot_job.wait(self.parent_run_id, timeout_s)

    def count(self, state: TrialState) -> int:
        return sum(1 for t in self.trials if t.state == state)
