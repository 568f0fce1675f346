"""The conditional search space: a study file's ``search`` section turned into Optuna suggestions.

Order matters and is fixed: optimizer, lr, the optimizer's parameters, schedule, the schedule's
parameters, warmup. A schedule's (or optimizer's) parameters are suggested only when it is chosen;
their Optuna names carry the owner as a prefix (``step.gamma``) so that two owners never share a
distribution, while the run's flat params (:meth:`RunConfig.flat`) drop it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import optuna

from autolr.config import SearchSpace
from autolr.hparams import RunConfig
from autolr.optimizers import OPTIMIZERS
from autolr.params import WARMUP, Choice, Fixed, ParamSpec, Setting
from autolr.schedules import SCHEDULES

__all__ = ["LrBounds", "grid_search_space", "suggest_run"]

LrBounds = Mapping[str, tuple[float, float]]  # optimizer name -> (low, high)


def suggest_run(trial: optuna.Trial, space: SearchSpace, lr_bounds: LrBounds, *, grid: bool = False) -> RunConfig:
    optimizer = _categorical(trial, "optimizer", list(space.optimizers))
    low, high = lr_bounds[optimizer]
    lr = trial.suggest_float("lr", low, high, log=True)
    opt_specs = {p.name: p for p in OPTIMIZERS[optimizer].params}
    optimizer_params = {name: _suggest(trial, f"{optimizer}.{name}", setting, opt_specs[name], grid) for name, setting in space.optimizers[optimizer].items()}
    schedule = _categorical(trial, "schedule", list(space.schedules))
    sched_specs = {p.name: p for p in SCHEDULES[schedule].params}
    schedule_params = {name: _suggest(trial, f"{schedule}.{name}", setting, sched_specs[name], grid) for name, setting in space.schedules[schedule].items()}
    warmup = _suggest(trial, "warmup", space.warmup, WARMUP, grid)
    return RunConfig(optimizer, lr, schedule, warmup, optimizer_params, schedule_params)


def _categorical(trial: optuna.Trial, name: str, choices: list[str]):
    # A single choice is not a search dimension: record nothing, so it never blocks a later edit.
    return choices[0] if len(choices) == 1 else trial.suggest_categorical(name, choices)


def _suggest(trial: optuna.Trial, name: str, setting: Setting, spec: ParamSpec, grid: bool):
    if isinstance(setting, Fixed):
        return setting.value
    if grid:  # the grid searches lr x schedule x optimizer only; the rest sits at a sensible value
        return _representative(setting, spec)
    if isinstance(setting, Choice):
        return trial.suggest_categorical(name, list(setting.values))
    if setting.integer:
        return trial.suggest_int(name, int(setting.low), int(setting.high), log=setting.log)
    return trial.suggest_float(name, setting.low, setting.high, log=setting.log)


def _representative(setting: Setting, spec: ParamSpec):
    if isinstance(setting, Choice):
        return setting.values[0]
    if setting.low <= spec.default <= setting.high:
        return spec.default
    mid = math.sqrt(setting.low * setting.high) if setting.log else (setting.low + setting.high) / 2
    return int(round(mid)) if setting.integer else mid


def lr_decades(low: float, high: float) -> list[float]:
    """Powers of ten inside ``[low, high]`` (the naive grid: 1, 0.1, 0.01, ...); the bounds when none."""
    k_low, k_high = math.ceil(math.log10(low) - 1e-9), math.floor(math.log10(high) + 1e-9)
    decades = [10.0**k for k in range(k_low, k_high + 1)]
    return decades or [low, high]


def grid_search_space(space: SearchSpace, lr_bounds: LrBounds) -> dict[str, list]:
    """Search space for ``optuna.samplers.GridSampler``: lr decades x schedules x optimizers."""
    low = min(b[0] for b in lr_bounds.values())
    high = max(b[1] for b in lr_bounds.values())
    grid: dict[str, list] = {"lr": lr_decades(low, high)}
    if len(space.optimizers) > 1:
        grid["optimizer"] = list(space.optimizers)
    if len(space.schedules) > 1:
        grid["schedule"] = list(space.schedules)
    return grid
