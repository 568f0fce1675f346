"""The curve pruner a study file names (``pruning.curve``): none, median or hyperband, and the grace it
gives a trial's warmup.

A trial in its warmup climbs to its peak rate: its loss at that point is not comparable with a trial
already training at its peak, and the median pruner would cut exactly the configurations whose warmup
is longest. So no trial is judged on its curve until its warmup's epochs are over
(:class:`WarmupGracePruner`; the warmup fraction is the trial's ``autolr.params`` user attr ``warmup``).

Optuna's median pruner reads every COMPLETE trial from the storage at each judgement, i.e. each epoch of
each trial: 57-86 ms of a 20-epoch trial on SQLite, 136-150 ms on PostgreSQL here
(``bench/optuna_calls.py``; with the snapshot 5-7 ms and 11-12 ms), as much as a small model's epoch. :class:`CompletedSnapshot` reads them once per judged trial and reuses them for its
later epochs; they are the trials the sampler drew the trial's configuration from (Optuna's samplers
read the study once per trial), so judging costs no read of its own. With one process nothing
completes while a trial runs, so the decisions are Optuna's own; with ``--jobs N`` a trial is judged
against the trials complete when it started (with the random and grid samplers, which read none, when
it was first judged); a trial another worker completes meanwhile counts from the next trial on.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Container
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autolr import keys
from autolr.config import StudyConfig
from autolr.sampler import trials_as_sampled

__all__ = ["CompletedSnapshot", "WarmupGracePruner", "make_pruner", "warmup_epochs"]


def make_pruner(config: StudyConfig, *, warmup_grace: bool = True) -> optuna.pruners.BasePruner:
    """Optuna's pruner for ``config.pruning.curve``, judging the per-epoch objective; with
    ``warmup_grace`` (the default), never before the trial's warmup is over."""
    p = config.pruning
    if p.curve == "median":
        median = CompletedSnapshot(optuna.pruners.MedianPruner(n_startup_trials=p.startup_trials, n_warmup_steps=p.first_epoch(config.train.epochs)))
        return WarmupGracePruner(median, epochs=config.train.epochs) if warmup_grace else median
    if p.curve == "hyperband":
        # Not wrapped: Optuna's TPE sampler looks for a HyperbandPruner itself (its brackets); its
        # min_resource already keeps the first epochs safe.
        return optuna.pruners.HyperbandPruner(min_resource=max(1, p.first_epoch(config.train.epochs)), max_resource=config.train.epochs)
    return optuna.pruners.NopPruner()


def warmup_epochs(trial: FrozenTrial, epochs: int) -> int:
    """Epochs the trial spends warming up: its ``warmup`` fraction of ``epochs``, rounded up (0: none)."""
    params = trial.user_attrs.get(keys.PARAMS) or trial.params
    warmup = params.get("warmup") or 0.0
    return math.ceil(float(warmup) * epochs - 1e-9) if warmup > 0 else 0


class WarmupGracePruner(optuna.pruners.BasePruner):
    """Wraps a curve pruner: ``prune()`` is False while the trial's last reported epoch (1-based, as
    autolr's trainer reports) is still inside its warmup, the wrapped pruner's answer afterwards.

    Args:
        pruner: the pruner that judges the curve once the warmup is over.
        epochs: the study's epochs per trial (the warmup is a fraction of them).
    """

    def __init__(self, pruner: optuna.pruners.BasePruner, *, epochs: int) -> None:
        if epochs < 1:
            raise ValueError(f"epochs: expected an integer >= 1, got {epochs!r}")
        self.pruner = pruner
        self.epochs = epochs

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < warmup_epochs(trial, self.epochs):
            return False
        return self.pruner.prune(study, trial)


class CompletedSnapshot(optuna.pruners.BasePruner):
    """Wraps a pruner that judges a trial against the study's COMPLETE trials (median, percentile):
    those of the list the sampler read for the trial, reused for all its epochs (see the module
    docstring)."""

    def __init__(self, pruner: optuna.pruners.BasePruner) -> None:
        self.pruner = pruner
        self._of: tuple[str, int] | None = None  # (study, trial number) the snapshot was taken for
        self._completed: list[FrozenTrial] = []

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        key = (study.study_name, trial.number)
        if key != self._of:
            self._completed = [t for t in trials_as_sampled(study, trial) if t.state == TrialState.COMPLETE]
            self._of = key
        return self.pruner.prune(_CompletedAsOf(study, self._completed), trial)


class _CompletedAsOf:
    """``study`` whose COMPLETE trials are a snapshot; everything else is the study's own."""

    def __init__(self, study: optuna.Study, completed: list[FrozenTrial]) -> None:
        self._study, self._completed = study, completed

    def get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        if states is not None and tuple(states) == (TrialState.COMPLETE,):
            return copy.deepcopy(self._completed) if deepcopy else self._completed
        return self._study.get_trials(deepcopy=deepcopy, states=states)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)
