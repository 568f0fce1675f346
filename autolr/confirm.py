"""Winners that hold: the top configurations of a search, trained again on fresh seeds.

Every search trial trains from the study's seed (the same initial weights, the same batches; with
``train.seed_per_trial`` each on its own, never one of the fresh seeds below), so the best
single-seed value is the best *draw*, and part of its lead is that seed's luck (the winner's curse:
on a digits MLP outside this repository, winners lost 8-30% when re-trained on fresh seeds).
After the search reaches its target, the ``top`` configurations are trained on ``seeds`` fresh seeds
each; the export names the configuration with the best mean over those seeds and holds the spread.

- The runs live in a sibling Optuna study ``<name>.confirm`` in the same storage (each an enqueued
  trial carrying the search trial it re-trains and its seed), so an interrupted confirmation resumes
  where it stopped and the search's sampler never sees them.
- They are MLflow runs under the invocation's parent run, tagged ``autolr.role = confirm``,
  ``autolr.confirm_of`` and ``autolr.seed``.
- A configuration that diverges (or fails) on a fresh seed is dropped: a winner that does not hold.
- With ``--jobs`` they run in the main process, after the workers; with ``lr: auto`` within the same
  bounds; with every sampler (the configurations are enqueued as they were tried).
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autolr import keys, store
from autolr.claim import ask_owned
from autolr.config import PruningConfig, StudyConfig
from autolr.driver import run_one
from autolr.seeds import SEED_STRIDE, fresh_seed

if TYPE_CHECKING:
    from autolr.space import LrBounds

__all__ = ["SEED_STRIDE", "Confirmation", "confirmation", "confirmation_pending", "run_confirmation"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Confirmation:
    """One configuration's confirmed values (fresh seeds, in order); ``complete``: every seed ran."""

    trial: int
    single_seed_value: float
    seeds: tuple[int, ...]
    values: tuple[float, ...]
    complete: bool
    dropped: str = ""  # why it is out of the race (diverged or failed on a fresh seed)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else (0.0 if self.values else None)

    def to_dict(self) -> dict[str, Any]:
        return {"trial": self.trial, "seeds": list(self.seeds), "values": list(self.values), "mean": self.mean, "std": self.std}


def confirm_name(config: StudyConfig) -> str:
    return f"{config.name}.confirm"


def fresh_seeds(config: StudyConfig, n: int) -> list[int]:
    return [fresh_seed(config.seed, k) for k in range(1, n + 1)]  # no search trial's seed, per trial or not


def status(confirmations: Sequence[Confirmation], enabled: bool) -> str:
    """``off``, ``pending`` (not run, or under way), ``complete`` or ``all dropped``, for exports."""
    if not enabled:
        return "off"
    if not confirmations or any(not c.complete and not c.dropped for c in confirmations):
        return "pending"
    return "complete" if any(c.complete and not c.dropped for c in confirmations) else "all dropped"


def _plan(config: StudyConfig) -> tuple[int, list[int]]:
    top, n_seeds = config.confirm.plan(config.trials)
    return top, fresh_seeds(config, n_seeds)


def candidates(study: optuna.Study, top: int) -> list[FrozenTrial]:
    """The ``top`` best COMPLETE search trials with distinct configurations, best first."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    reverse = study.direction == optuna.study.StudyDirection.MAXIMIZE
    picked, seen = [], set()
    for t in sorted(complete, key=lambda t: t.value, reverse=reverse):
        key = tuple(sorted(t.params.items()))
        if key not in seen:
            seen.add(key)
            picked.append(t)
        if len(picked) == top:
            break
    return picked


def confirmation(config: StudyConfig, study: optuna.Study, url: str) -> list[Confirmation]:
    """What the storage holds of the study's confirmation, per candidate, best candidate first."""
    if not config.confirm.enabled:
        return []
    confirm_study = _load(config, url)
    runs = confirm_study.get_trials(deepcopy=False) if confirm_study else []
    # the plan of the invocation that confirmed (its --trials and --seed may differ from the study file's)
    plan = confirm_study.user_attrs.get(keys.CONFIRM_PLAN) if confirm_study else None
    top, seed_list = (plan["top"], plan["seeds"]) if isinstance(plan, dict) else _plan(config)
    out = []
    for trial in candidates(study, top):
        mine = {t.user_attrs[keys.SEED]: t for t in runs if t.user_attrs.get(keys.CONFIRM_OF) == trial.number}
        values, seeds, dropped = [], [], ""
        for seed in seed_list:
            t = mine.get(seed)
            if t is None:
                continue
            if t.state == TrialState.COMPLETE:
                values.append(float(t.value))
                seeds.append(seed)
            elif _dropped(t):
                dropped = t.user_attrs.get(keys.PRUNE_REASON) or t.user_attrs.get(keys.ERROR) or t.state.name
        out.append(Confirmation(trial.number, float(trial.value), tuple(seeds), tuple(values), len(values) == len(seed_list), dropped))
    return out


def confirmation_pending(config: StudyConfig, study: optuna.Study, url: str) -> bool:
    """Whether a confirmation run is still to be trained (the search being at its target)."""
    return any(not c.complete and not c.dropped for c in confirmation(config, study, url))


def confirmed_winner(confirmations: Sequence[Confirmation], direction: str) -> Confirmation | None:
    """The configuration with the best mean over every fresh seed, once the race is over (no candidate
    still to train); None while it is under way, or when every candidate was dropped."""
    if any(not c.complete and not c.dropped for c in confirmations):
        return None
    complete = [c for c in confirmations if c.complete and not c.dropped]
    if not complete:
        return None
    pick = min if direction == "minimize" else max
    return pick(complete, key=lambda c: c.mean)


def run_confirmation(
    config: StudyConfig,
    study: optuna.Study,
    url: str,
    *,
    make_objective: Callable[[StudyConfig], Callable[[optuna.Trial], float]],
    lr_bounds: LrBounds,
    on_trial: Callable[[FrozenTrial], None] | None = None,
) -> None:
    """Train what is still missing of the confirmation: each candidate on each fresh seed, seed by
    seed (every candidate's first fresh seed before anyone's second), dropping a candidate that
    diverges or fails."""
    if not config.confirm.enabled:
        return
    top, seeds = _plan(config)
    confirm_study = _open(config, url)
    confirm_study.set_user_attr(keys.CONFIRM_PLAN, {"top": top, "seeds": seeds})
    picked = candidates(study, top)
    for seed in seeds:
        for trial in picked:
            # read before every run, not once: another invocation on the study may have trained (or dropped) this pair since
            runs = [t for t in confirm_study.get_trials(deepcopy=False) if t.user_attrs.get(keys.CONFIRM_OF) == trial.number]
            if any(_dropped(t) for t in runs) or any(t.user_attrs.get(keys.SEED) == seed and t.state == TrialState.COMPLETE for t in runs):
                continue  # out of the race, or this seed is done (an interrupted run is trained again)
            confirm_study.enqueue_trial(trial.params, user_attrs={keys.CONFIRM_OF: trial.number, keys.SEED: seed, keys.SOURCE: "confirm"})
            seeded = dataclasses.replace(config, seed=seed, pruning=dataclasses.replace(config.pruning, curve="none"))
            last = run_one(confirm_study, ask_owned(confirm_study), make_objective(seeded))
            if on_trial is not None:
                on_trial(last)
            logger.info("confirmation of trial %d on seed %d: %s %s", trial.number, seed, last.state.name, last.value)


def _dropped(t: FrozenTrial) -> bool:
    """Diverged on a fresh seed, or raised: out of the race. (An interrupted run, FAIL without an
    error, is not: it is trained again when the confirmation resumes.)"""
    return t.state == TrialState.PRUNED or (t.state == TrialState.FAIL and keys.ERROR in t.user_attrs)


def _open(config: StudyConfig, url: str) -> optuna.Study:
    confirm_config = dataclasses.replace(config, name=confirm_name(config), pruning=PruningConfig(curve="none"))
    sampler = optuna.samplers.RandomSampler(seed=config.seed)
    return store.create_or_load(confirm_config, url, sampler=sampler, pruner=optuna.pruners.NopPruner(), identity=False)  # the search study holds it


def _load(config: StudyConfig, url: str) -> optuna.Study | None:
    named = dataclasses.replace(config, name=confirm_name(config))
    return store.load(named, url, identity=False) if store.exists(named.name, url) else None
