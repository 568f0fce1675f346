"""Samplers, and the divergence ceiling that autolr adds to them.

A diverged trial is PRUNED at once, which already ranks it below every finished trial in TPE. That
alone still lets a sampler spend a third of a study above the stability limit while it learns the
shape. :class:`CeilingSampler` learns the limit directly: per optimizer, the *ceiling* is the lowest
learning rate that diverged above every rate that stayed stable. A proposal at or above the ceiling is
moved, log-uniformly, into the band between the highest stable rate and the ceiling, which is where
the stability edge (and, for many problems, the best rate) lies.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

__all__ = ["DIVERGED_ATTR", "CeilingSampler", "lr_ceiling", "make_sampler"]

DIVERGED_ATTR = "autolr.diverged"


def make_sampler(name: str, *, seed: int, grid_space: dict | None = None, ceiling: bool = True) -> BaseSampler:
    """The sampler named in a study file, seeded; wrapped with the ceiling unless it is grid or random."""
    if name == "grid":
        return optuna.samplers.GridSampler(grid_space, seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        base = optuna.samplers.TPESampler(seed=seed, n_startup_trials=8, multivariate=True, group=True)
    elif name == "gp":
        base = optuna.samplers.GPSampler(seed=seed, n_startup_trials=8)
    elif name == "cmaes":
        independent = optuna.samplers.TPESampler(seed=seed)
        base = optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=8, independent_sampler=independent)
    else:
        raise ValueError(f"unknown sampler {name!r}; expected tpe, random, grid, gp or cmaes")
    return CeilingSampler(base, seed=seed) if ceiling else base


def lr_ceiling(trials: Sequence[FrozenTrial], optimizer: str | None) -> tuple[float | None, float | None]:
    """``(highest stable lr, ceiling)`` among finished trials of ``optimizer`` (None: any optimizer)."""
    stable, diverged = [], []
    for t in trials:
        lr = t.params.get("lr")
        if lr is None or (optimizer is not None and t.params.get("optimizer", optimizer) != optimizer):
            continue
        (diverged if t.user_attrs.get(DIVERGED_ATTR) else stable).append(lr)
    stable_max = max(stable) if stable else None
    above = [lr for lr in diverged if stable_max is None or lr > stable_max]
    return stable_max, (min(above) if above else None)


class CeilingSampler(BaseSampler):
    """Wraps any sampler; keeps its proposals for ``lr`` below the learned divergence ceiling."""

    def __init__(self, base: BaseSampler, *, seed: int | None = None) -> None:
        self.base = base
        self._rng = np.random.RandomState(seed)

    def infer_relative_search_space(self, study, trial) -> dict[str, BaseDistribution]:
        return self.base.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
        params = self.base.sample_relative(study, trial, search_space)
        if "lr" in params:
            optimizer = params.get("optimizer", trial.params.get("optimizer"))
            params["lr"] = self._below_ceiling(study, optimizer, params["lr"], search_space["lr"])
        return params

    def sample_independent(self, study, trial, param_name, param_distribution) -> Any:
        value = self.base.sample_independent(study, trial, param_name, param_distribution)
        if param_name == "lr":
            value = self._below_ceiling(study, trial.params.get("optimizer"), value, param_distribution)
        return value

    def _below_ceiling(self, study, optimizer: str | None, lr: float, dist) -> float:
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        stable_max, ceiling = lr_ceiling(trials, optimizer)
        if ceiling is None or lr < ceiling:
            return lr
        # The band reaches at least a factor 2 below the ceiling: a band squeezed between a barely stable
        # and a barely divergent rate would send every moved proposal into slow, costly divergence.
        low = max(min(stable_max or dist.low, ceiling / 2.0), dist.low)
        high = min(ceiling, dist.high)
        if not low < high:
            return lr
        return float(math.exp(self._rng.uniform(math.log(low), math.log(high))))

    def before_trial(self, study, trial) -> None:
        self.base.before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()
        self._rng.seed()
