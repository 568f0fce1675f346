"""Samplers, and the divergence ceiling that autolr adds to them.

A diverged trial is PRUNED at once, which already ranks it below every finished trial in TPE. That
alone still lets a sampler spend a third of a study above the stability limit while it learns the
shape. :class:`CeilingSampler` learns the limit directly: per optimizer, the *ceiling* is the lowest
learning rate that diverged above every rate that stayed stable. A proposal at or above the ceiling is
moved, log-uniformly, to just below the highest stable rate (a factor 3 to 30 below the ceiling while
nothing is known stable), so it is spent where training works instead of on another divergence.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.samplers import BaseSampler
from optuna.samplers._lazy_random_state import LazyRandomState  # the grid sampler's own choice RNG (see _GridSampler)
from optuna.trial import FrozenTrial, TrialState

from autolr import keys, stability
from autolr.sweep import SweepSampler

__all__ = ["CeilingSampler", "JointLrGPSampler", "lr_ceiling", "make_sampler", "risky_band", "trials_as_sampled"]


def make_sampler(
    name: str,
    *,
    seed: int,
    grid_space: dict | None = None,
    ceiling: bool = True,
    parallel: bool = False,
    sweep: tuple[int, int] | None = None,
    grid_seed: int | None = None,
    lr_bounds: Mapping[str, tuple[float, float]] | None = None,
) -> BaseSampler:
    """The sampler named in a study file, seeded; wrapped with the ceiling unless it is grid or random,
    and with the schedule sweep (:mod:`autolr.sweep`; ``sweep``: its first trial and the study's
    target) unless it is grid or random.

    ``parallel``: other processes run trials of the study at the same time (``--jobs``). TPE then
    treats their running trials as bad ones (``constant_liar``), so that workers do not all propose
    the same promising point; with one process there is nothing running to lie about.

    ``lr_bounds``: each optimizer's range of rates, where they differ (``lr: auto``; Prodigy's own
    range beside Adam's): GP then models the rate with the optimizer (:class:`JointLrGPSampler`).
    TPE keeps one range for the rate in its grouped space, the first finished trial's optimizer's,
    and where a joint proposal's rate falls outside its own optimizer's range Optuna draws it again
    on its own (10 of the 22 rates after the start-up on digits with ``lr: auto``, study seed 6).
    Modelled jointly, TPE was measured on the 50 ``lr: auto`` studies of ``bench/efficiency.py``
    and not kept: digits deep's median improved (0.997x -> 0.943x), digits wide's worst case did not
    (1.114x -> 1.211x; ``bench/variants/jointlr-tpe.patch``, README's ``[jointlr]``).
    """
    if name == "grid":  # ``grid_seed`` shuffles the points (shared by every process); ``seed`` picks among the left-over ones
        return _GridSampler(grid_space, seed=seed if grid_seed is None else grid_seed, choice_seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        with warnings.catch_warnings():  # multivariate/group are 'experimental' since Optuna 2.2; chosen on purpose
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            base = optuna.samplers.TPESampler(seed=seed, n_startup_trials=8, multivariate=True, group=True, constant_liar=parallel)
    elif name == "gp":
        base = JointLrGPSampler(seed=seed, n_startup_trials=8, lr_bounds=lr_bounds)
    elif name == "cmaes":
        independent = optuna.samplers.TPESampler(seed=seed)
        base = optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=8, independent_sampler=independent)
    else:
        raise ValueError(f"unknown sampler {name!r}; expected tpe, random, grid, gp or cmaes")
    base = CeilingSampler(base, seed=seed) if ceiling else base
    return SweepSampler(base, at=sweep[0], trials=sweep[1]) if sweep is not None else base


def lr_ceiling(trials: Sequence[FrozenTrial], optimizer: str | None) -> tuple[float | None, float | None]:
    """``(highest stable lr, ceiling)`` among finished trials of ``optimizer`` (None: any optimizer);
    stable as :mod:`autolr.stability` defines it.

    The ceiling is the lowest diverged rate at and above which most trials diverged. Near the limit
    of mini-batch training, divergence is fuzzy (the same rate can survive once and blow up in its
    last epoch the next time); a majority keeps one lucky survivor from holding the ceiling up.
    """
    runs = []
    for t in trials:
        lr = t.params.get("lr")
        if lr is None or (optimizer is not None and t.params.get("optimizer", optimizer) != optimizer):
            continue
        diverged = bool(t.user_attrs.get(keys.DIVERGED))
        runs.append((lr, diverged, stability.is_stable(t.state.name, diverged=diverged, **stability.ratios(t.user_attrs))))
    stable_max = stability.max_stable_lr((lr, stable) for lr, _, stable in runs)
    runs.sort(reverse=True)
    ceiling, n_diverged = None, 0
    for n_above, (lr, diverged, _) in enumerate(runs, start=1):
        n_diverged += diverged
        if diverged and n_diverged * 2 >= n_above:
            ceiling = lr
    return stable_max, ceiling


class _GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid, whose ``after_trial`` calls ``Study.stop`` once the grid is covered, only inside
    ``Study.optimize``: outside it (autolr's driver, which stops once the grid is covered and nothing
    is queued) ``Study.stop`` raises, and a queued trial (a killed or interrupted point's retry) run
    after the grid was covered failed in its own tell."""

    def __init__(self, search_space, seed: int | None = None, choice_seed: int | None = None) -> None:
        super().__init__(search_space, seed=seed)  # shuffles the points with ``seed``: their stored indices need the same order
        if choice_seed is not None:  # past the grid's size (a retry took a number), a point is drawn: each worker draws its own
            self._rng = LazyRandomState(choice_seed)

    def after_trial(self, study, trial, state, values) -> None:
        if getattr(study._thread_local, "in_optimize_loop", False):  # the flag Study.stop checks
            super().after_trial(study, trial, state, values)


def risky_band(lr: float, stable_max: float | None, ceiling: float | None) -> tuple[float, float] | None:
    """Where to move a proposed ``lr`` that is likely to diverge, or None to keep it.

    1. at or above the ceiling: to between half the highest stable rate and halfway (in log) to the
       ceiling; not to the ceiling itself, since near the limit divergence is slow and fuzzy (a run
       can blow up in its last epoch) and each such trial costs a whole budget;
    2. nothing stable known yet, and within a factor 3 of the ceiling: a factor 3 to 30 below it;
    3. in the upper half of a wide (over 3x) unexplored gap between the highest stable rate and the
       ceiling: into its lower half, so the gap is narrowed from the safe side.
    TPE still reaches the edge by itself when the best trials sit there.
    """
    if ceiling is None:
        return None
    if stable_max is None:
        return (ceiling / 30.0, ceiling / 3.0) if lr >= ceiling / 3.0 else None
    top = min(stable_max, ceiling / 1.05)
    middle = math.sqrt(top * ceiling)
    if lr >= ceiling:
        return top / 2.0, middle
    if ceiling / top > 3.0 and lr >= middle:
        return top, middle
    return None


def trials_as_sampled(study: optuna.Study, trial: FrozenTrial) -> list[FrozenTrial]:
    """The study's trials as its sampler read them for ``trial``: Optuna's per-trial list (``ask`` and
    ``tell`` renew it in their thread; its samplers read it once per trial, as TPE does), so no read of
    the storage of its own; filled here where no sampler read it (the random and grid samplers). Read
    afresh where that list predates the trial: a trial handled in another thread than the one that
    asked it (a user's loop judging epochs from a thread of its own)."""
    trials = study._get_trials(deepcopy=False, use_cache=True)
    if any(t.number == trial.number for t in reversed(trials)):
        return trials
    return study.get_trials(deepcopy=False)


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
            params["lr"] = self._below_ceiling(study, trial, optimizer, params["lr"], search_space["lr"])
        return params

    def sample_independent(self, study, trial, param_name, param_distribution) -> Any:
        value = self.base.sample_independent(study, trial, param_name, param_distribution)
        if param_name == "lr":
            value = self._below_ceiling(study, trial, trial.params.get("optimizer"), value, param_distribution)
        return value

    def _below_ceiling(self, study, trial: FrozenTrial, optimizer: str | None, lr: float, dist) -> float:
        # The trials the base sampler sampled from, not another read of the storage for every proposal.
        # Under Hyperband that is every bracket's trials, not the proposing bracket's alone: a rate
        # diverges in any.
        trials = [t for t in trials_as_sampled(study, trial) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        band = risky_band(lr, *lr_ceiling(trials, optimizer))
        if band is None:
            return lr
        low, high = max(band[0], dist.low), min(band[1], dist.high)
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


class JointLrGPSampler(optuna.samplers.GPSampler):
    """Optuna's GP sampler, modelling the rate with the optimizer when each optimizer searches its
    own range of rates (``lr_bounds``: ``lr: auto``'s range test per optimizer, or Prodigy's range
    beside the others').

    GP models the intersection of the finished trials' search spaces, and a parameter whose range
    differs between trials is not in it: with per-optimizer ranges GP drew every rate at random (and
    Optuna warned so at every trial). Here the rate's distribution spans every optimizer's range (and
    every finished trial's). A proposal whose rate lies outside the range of the optimizer proposed
    with it has its rate drawn in that range instead, as every rate was before: moved to the range's
    edge, GP never saw the rate it proposed and proposed the same edge trial again and again.
    """

    def __init__(self, *, lr_bounds: Mapping[str, tuple[float, float]] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._lr_bounds = dict(lr_bounds) if lr_bounds and len(set(lr_bounds.values())) > 1 else None

    def infer_relative_search_space(self, study, trial) -> dict[str, BaseDistribution]:
        space = super().infer_relative_search_space(study, trial)
        if self._lr_bounds is None or "optimizer" not in space:
            return space
        ranges = [*self._lr_bounds.values()]
        for t in study._get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED), use_cache=True):
            if isinstance(t.distributions.get("lr"), FloatDistribution):
                ranges.append((t.distributions["lr"].low, t.distributions["lr"].high))
        space["lr"] = FloatDistribution(min(low for low, _ in ranges), max(high for _, high in ranges), log=True)
        return space

    def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
        params = super().sample_relative(study, trial, search_space)
        bounds = self._lr_bounds.get(params.get("optimizer")) if self._lr_bounds is not None else None
        if bounds is not None and "lr" in params and not bounds[0] <= params["lr"] <= bounds[1]:
            del params["lr"]  # drawn in its optimizer's range instead, as before; clipped, GP proposed the same edge again and again
        return params
