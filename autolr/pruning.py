"""The curve pruner a study file names (``pruning.curve``): none, median or hyperband, and the grace it
gives a trial's warmup.

A trial in its warmup climbs to its peak rate: its loss at that point is not comparable with a trial
already training at its peak, and the median pruner would cut exactly the configurations whose warmup
is longest. So no trial is judged on its curve until its warmup's epochs are over
(:class:`WarmupGracePruner`; the warmup fraction is the trial's ``autolr.params`` user attr ``warmup``).
"""

from __future__ import annotations

import math

import optuna
from optuna.trial import FrozenTrial

from autolr import keys
from autolr.config import StudyConfig

__all__ = ["WarmupGracePruner", "make_pruner", "warmup_epochs"]


def make_pruner(config: StudyConfig, *, warmup_grace: bool = True) -> optuna.pruners.BasePruner:
    """Optuna's pruner for ``config.pruning.curve``, judging the per-epoch objective; with
    ``warmup_grace`` (the default), never before the trial's warmup is over."""
    p = config.pruning
    if p.curve == "median":
        median = optuna.pruners.MedianPruner(n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_epochs)
        return WarmupGracePruner(median, epochs=config.train.epochs) if warmup_grace else median
    if p.curve == "hyperband":
        # Not wrapped: Optuna's TPE sampler looks for a HyperbandPruner itself (its brackets); its
        # min_resource already keeps the first epochs safe.
        return optuna.pruners.HyperbandPruner(min_resource=max(1, p.warmup_epochs), max_resource=config.train.epochs)
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
