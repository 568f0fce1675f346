"""The curve pruner a study file names (``pruning.curve``): none, median or hyperband."""

from __future__ import annotations

import optuna

from autolr.config import StudyConfig

__all__ = ["make_pruner"]


def make_pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    """Optuna's pruner for ``config.pruning.curve``, judging the per-epoch objective."""
    p = config.pruning
    if p.curve == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_epochs)
    if p.curve == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, p.warmup_epochs), max_resource=config.train.epochs)
    return optuna.pruners.NopPruner()
