"""Winners that hold: the top configurations of a search, trained again on fresh seeds.

Every search trial trains from the study's seed (the same initial weights, the same batches; with
``train.seed_per_trial`` each on its own, never one of the fresh seeds below), so the best
single-seed value is the best *draw*, and part of its lead is that seed's luck (the winner's curse:
on a digits MLP outside this repository, winners lost 8-30% when re-trained on fresh seeds).
After the search reaches its target, the best configurations are trained on ``seeds`` fresh seeds
each (by default a race within a quarter of the study's trials: :func:`_race`; with ``top`` given,
exactly the ``top`` best: :func:`_fixed`); the export names the configuration with the best mean over
those seeds and holds the spread.

- The runs live in a sibling Optuna study ``<name>.confirm`` in the same storage (each a trial with
  the search trial's configuration fixed, as an enqueued trial's, carrying the trial it re-trains and
  its seed), so an interrupted confirmation resumes where it stopped and the search's sampler never
  sees them.
- They are MLflow runs under the invocation's parent run, tagged ``autolr.role = confirm``,
  ``autolr.confirm_of`` and ``autolr.seed``.
- A configuration that diverges (or fails) on a fresh seed is dropped: a winner that does not hold.
- With ``--jobs`` they run in the main process, after the workers; with ``lr: auto`` within the same
  bounds; with every sampler (the configurations are fixed as they were tried).
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
from collections.abc import Callable, Container, Sequence
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autolr import keys, store
from autolr.claim import start_owned
from autolr.config import PruningConfig, StudyConfig
from autolr.driver import INTERRUPTED, run_one
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
    dropped: str = ""  # why it is out of the race (diverged or failed on a fresh seed; cannot beat the best mean)

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


def _plan(config: StudyConfig) -> tuple[int, list[int], int | None]:
    """``(candidates, fresh seeds, budget)``: with ``top`` left to autolr, a race of up to ``budget``
    runs over as many candidates; with ``top`` given, exactly those configurations (budget None)."""
    top, n_seeds = config.confirm.plan(config.trials)
    budget = config.confirm.budget(config.trials)
    return (budget if budget is not None else top), fresh_seeds(config, n_seeds), budget


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
    top, seed_list, budget = (plan["top"], plan["seeds"], plan.get("budget")) if isinstance(plan, dict) else _plan(config)
    return _walk(candidates(study, top), runs, seed_list, budget, config.direction)[0]


_Runs = dict[int, dict[int, FrozenTrial]]  # search trial number -> fresh seed -> its latest confirmation run
_Next = tuple[FrozenTrial, int] | None  # the (candidate, seed) to train next; None: nothing is left


def _walk(
    picked: Sequence[FrozenTrial],
    runs: Sequence[FrozenTrial],
    seeds: Sequence[int],
    budget: int | None,
    direction: str,
    *,
    skip: Container[tuple[int, int]] = (),
) -> tuple[list[Confirmation], _Next]:
    """Where the confirmation stands, from its stored runs: each candidate's confirmation, and the
    next (candidate, seed) to train (None: it is over, or what is left waits for a (trial number,
    seed) pair in ``skip``). A pure function of the runs, so an interrupted confirmation, or another
    invocation's, resumes exactly where it stood."""
    by_candidate: _Runs = {}
    for t in sorted(runs, key=lambda t: t.number):  # a seed trained again after an interruption: the later run
        of, seed = t.user_attrs.get(keys.CONFIRM_OF), t.user_attrs.get(keys.SEED)
        if of is not None and seed is not None:
            by_candidate.setdefault(of, {})[seed] = t
    if budget is None:
        return _fixed(picked, by_candidate, seeds, skip)
    done, following = _race(picked, by_candidate, seeds, budget, direction)
    return done, (None if following is not None and (following[0].number, following[1]) in skip else following)


def _fixed(picked: Sequence[FrozenTrial], by_candidate: _Runs, seeds: Sequence[int], skip: Container[tuple[int, int]]) -> tuple[list[Confirmation], _Next]:
    """``top`` given: every candidate on every seed, seed by seed (every candidate's first fresh seed
    before anyone's second); a candidate that diverges or fails is dropped."""
    out, todo = [], []
    for trial in picked:
        mine, values, done, dropped = by_candidate.get(trial.number, {}), [], [], ""
        for k, seed in enumerate(seeds):
            t = mine.get(seed)
            if t is not None and _dropped(t):
                dropped = _why(t)
            elif t is not None and t.state == TrialState.COMPLETE:
                values.append(float(t.value))
                done.append(seed)
            else:
                todo.append((k, trial, seed))
        out.append(Confirmation(trial.number, float(trial.value), tuple(done), tuple(values), len(values) == len(seeds), dropped))
    out_of_race = {c.trial for c in out if c.dropped}
    todo = [(k, trial, seed) for k, trial, seed in todo if trial.number not in out_of_race and (trial.number, seed) not in skip]
    return out, (min(todo, key=lambda x: x[0])[1:] if todo else None)


def _race(picked: Sequence[FrozenTrial], by_candidate: _Runs, seeds: Sequence[int], budget: int, direction: str) -> tuple[list[Confirmation], _Next]:
    """``top`` left to autolr: candidates in the order of their search values, each on every fresh
    seed, while the runs fit in ``budget``. A search value is the best draw of its configuration, so
    it is an optimistic estimate of what the configuration does on a fresh seed:

    - a candidate whose search value does not beat the best confirmed mean so far is not tried (nor
      is anyone after it);
    - a candidate is dropped after a seed once its mean could not beat the best confirmed mean even if
      its remaining seeds did as well as its search value;
    - one that diverges or fails on a fresh seed is dropped, as always.

    So a winner whose search value was luck (it regressed on the fresh seeds) makes the race go on to
    the next candidates, and a winner that held ends it after its own seeds."""
    better = (lambda a, b: a < b) if direction == "minimize" else (lambda a, b: a > b)
    out: list[Confirmation] = []
    used, best = 0, None
    for trial in picked:
        mine = by_candidate.get(trial.number, {})
        if not any(seed in mine for seed in seeds):  # not started: is it worth starting, and does it fit?
            if best is not None and not better(trial.value, best.mean):
                break
            if used + len(seeds) > budget:
                break
        values, done, dropped, pending = [], [], "", None
        for seed in seeds:
            t = mine.get(seed)
            if t is not None and _dropped(t):
                used, dropped = used + 1, _why(t)
                break
            if t is None or t.state != TrialState.COMPLETE:
                pending = seed
                break
            used += 1
            values.append(float(t.value))
            done.append(seed)
            at_best = (sum(values) + (len(seeds) - len(values)) * trial.value) / len(seeds)
            if best is not None and len(values) < len(seeds) and not better(at_best, best.mean):
                dropped = f"cannot beat #{best.trial}'s confirmed mean {best.mean:.4g} ({at_best:.4g} at best)"
                break
        c = Confirmation(trial.number, float(trial.value), tuple(done), tuple(values), len(values) == len(seeds) and not dropped, dropped)
        out.append(c)
        if pending is not None:
            return out, (trial, pending)
        if c.complete and (best is None or better(c.mean, best.mean)):
            best = c
    return out, None


def _why(t: FrozenTrial) -> str:
    return t.user_attrs.get(keys.PRUNE_REASON) or t.user_attrs.get(keys.ERROR) or t.state.name


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
    """Train what is still missing of the confirmation (:func:`_fixed` with ``top`` given, else
    :func:`_race`), one run at a time."""
    if not config.confirm.enabled:
        return
    top, seeds, budget = _plan(config)
    confirm_study = _open(config, url)
    confirm_study.set_user_attr(keys.CONFIRM_PLAN, {"top": top, "seeds": seeds, "budget": budget})
    picked, tried = candidates(study, top), set()
    while True:
        # read before every run, not once: another invocation on the study may have trained (or dropped) a pair since;
        # a pair tried here that ended without a result or an error is left to the next invocation
        _, following = _walk(picked, confirm_study.get_trials(deepcopy=False), seeds, budget, config.direction, skip=tried)
        if following is None:
            return
        trial, seed = following
        tried.add((trial.number, seed))
        seeded = dataclasses.replace(config, seed=seed, pruning=dataclasses.replace(config.pruning, curve="none"))
        started = start_owned(confirm_study, trial.params, {keys.CONFIRM_OF: trial.number, keys.SEED: seed, keys.SOURCE: "confirm"})
        last = run_one(confirm_study, started, make_objective(seeded))
        if on_trial is not None:
            on_trial(last)
        logger.info("confirmation of trial %d on seed %d: %s %s", trial.number, seed, last.state.name, last.value)
        if last.state == TrialState.FAIL and not _dropped(last):
            logger.warning("confirmation of trial %d on seed %d ended without a result; the next invocation trains it again", trial.number, seed)


def _dropped(t: FrozenTrial) -> bool:
    """Diverged on a fresh seed, or raised: out of the race. (An interrupted run, FAIL without an
    error or with :data:`~autolr.driver.INTERRUPTED` as its error, is not: it is trained again when
    the confirmation resumes.)"""
    return t.state == TrialState.PRUNED or (t.state == TrialState.FAIL and t.user_attrs.get(keys.ERROR, INTERRUPTED) != INTERRUPTED)


def _open(config: StudyConfig, url: str) -> optuna.Study:
    confirm_config = dataclasses.replace(config, name=confirm_name(config), pruning=PruningConfig(curve="none"))
    sampler = optuna.samplers.RandomSampler(seed=config.seed)
    return store.create_or_load(confirm_config, url, sampler=sampler, pruner=optuna.pruners.NopPruner(), identity=False)  # the search study holds it


def _load(config: StudyConfig, url: str) -> optuna.Study | None:
    named = dataclasses.replace(config, name=confirm_name(config))
    return store.load(named, url, identity=False) if store.exists(named.name, url) else None
