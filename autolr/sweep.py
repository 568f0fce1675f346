"""The schedule sweep: the search's last trials try the incumbent's rate with each other schedule.

The best learning rate moves little between the schedules of one optimizer, while the best
*schedule* is a categorical that TPE models from the few trials that chose it. A search that finds a
good (optimizer, schedule) pair refines that pair's rate and may never try another schedule near the
rate that works (``bench/efficiency.py``, digits wide, study seed 4: trials 19-22 were all Adam with
the step schedule at 0.0039-0.0049; Adam at a constant rate was tried at 0.0137, 0.00065 and 0.00014
only, and the grid's best, Adam constant near 0.003, is 10% better on fresh seeds than the exported
Adam step 0.0048).

So the last trials of a study (one per other schedule, :func:`sweep_at`) are the best finished
trial's configuration with each other schedule not yet tried near its rate, at the same rate (the
schedule's own parameters left to the sampler): enqueued once per target, in Optuna's own queue
(``enqueue_trial``), tagged ``autolr.source = sweep``. They are candidates for the confirmation like
any trial: one whose search value makes the top of the study is raced on fresh seeds, and the step
back moves the rate. With the four built-in schedule families that is 3 trials of 30.

Why last: swept earlier (at 60% of the trials), the sweep's trials at the incumbent's good rate fill
TPE's good set with the incumbent's optimizer, and the rest of the search follows it (digits, study
seed 6: it swept SGD's schedules and exported sgd 0.027 constant at 1.19x the grid's pick); digits
and digits deep lost their worst cases while digits wide gained. At the end, digits wide with fixed
bounds went from 1.079x / 1.326x (median / worst over 10 study seeds) to 0.999x / 1.115x with no
other task's worst case worse (the table under Benchmarks in the README).

Only model-based samplers get it (TPE, GP, CMA-ES), in studies of 20 trials or more whose other
schedules are at most a sixth of the trials: random search stays random, a grid tries its own points.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from autolr import keys

__all__ = ["SweepSampler", "sweep_at", "sweep_params"]

logger = logging.getLogger(__name__)

MIN_TRIALS = 20  # a smaller study has no trials to spare after the sampler's start-up
MAX_SHARE = 6  # the sweep takes at most a sixth of the study's trials
NEAR_DECADES = 0.1  # a schedule already tried within this of the incumbent's rate is not tried again


def sweep_at(trials: int, schedules: int) -> int | None:
    """The trial at whose start a study of ``trials`` trials over ``schedules`` schedules enqueues
    the sweep, so that its ``schedules - 1`` trials are the study's last (None: no sweep)."""
    others = schedules - 1
    if trials < MIN_TRIALS or not 1 <= others <= trials // MAX_SHARE:
        return None
    return trials - others - 1


def sweep_params(trials: list[FrozenTrial], direction: str) -> list[dict[str, Any]]:
    """The configurations to enqueue: the best COMPLETE trial's with each schedule it did not use
    and no trial of its optimizer (finished, running or failed) tried within :data:`NEAR_DECADES` of its rate; the
    incumbent's schedule parameters (``step.gamma``...) dropped, every other parameter kept."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)]
    if not complete:
        return []
    best = (min if direction == "minimize" else max)(complete, key=lambda t: t.value)
    dist, lr = best.distributions.get("schedule"), best.params.get("lr")
    if not isinstance(dist, CategoricalDistribution) or lr is None or lr <= 0:
        return []
    mine = best.params["schedule"]
    kept = {k: v for k, v in best.params.items() if k != "schedule" and not k.startswith(f"{mine}.")}
    out = []
    for schedule in dist.choices:
        if schedule == mine or any(_tried(t, kept.get("optimizer"), schedule, lr) for t in trials):
            continue
        out.append({**kept, "schedule": schedule})
    return out


def _tried(t: FrozenTrial, optimizer: str | None, schedule: str, lr: float) -> bool:
    p = t.params
    if p.get("schedule") != schedule or p.get("optimizer") != optimizer or not p.get("lr", 0) > 0:
        return False
    return abs(math.log10(p["lr"] / lr)) < NEAR_DECADES


class SweepSampler(BaseSampler):
    """Wraps a sampler; from trial ``at`` of a study with a target of ``trials`` finished trials on,
    enqueues the schedule sweep once its trials fill what is left of the target (some schedules may
    have been tried near the incumbent's rate by then; with less room than schedules, the first
    ones): once per target, recorded in the study's ``autolr.sweep`` attribute, whichever process
    gets there. A sweep that cannot be made is skipped with a warning: it never fails the ask it
    runs in."""

    def __init__(self, base: BaseSampler, *, at: int, trials: int) -> None:
        self.base, self.at, self.trials, self._done = base, at, trials, False

    def infer_relative_search_space(self, study, trial):
        return self.base.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self.base.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.base.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if not self._done and trial.number >= self.at:
            try:
                # Hyperband hands its samplers a view of one bracket's trials: the sweep is the study's
                self._enqueue(getattr(study, "_study", study), trial.number)
            except Exception as exc:  # noqa: BLE001 - inside Study.ask: a failure here would orphan the asked trial
                self._done = True
                logger.warning("schedule sweep skipped: %s: %s", type(exc).__name__, exc)
        self.base.before_trial(study, trial)

    def _enqueue(self, study: optuna.Study, at: int) -> None:
        if study.user_attrs.get(keys.SWEEP, {}).get("target", 0) >= self.trials:  # swept for this target already
            self._done = True
            return
        trials = study.get_trials(deepcopy=False)
        # the asked one included; a queued trial (a killed or interrupted one's retry) runs before the sweep's
        claimed = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING) for t in trials)
        room = self.trials - claimed  # trials still to start after the one being asked and the queue
        queued = sweep_params(trials, study.direction.name.lower())
        if 0 < room and len(queued) < room:  # not yet: the sweep's trials come last
            return
        queued = queued[: max(room, 0)]
        for params in queued:
            study.enqueue_trial(params, user_attrs={keys.SOURCE: "sweep"}, skip_if_exists=True)
        study.set_user_attr(keys.SWEEP, {"at": at, "target": self.trials, "enqueued": len(queued)})
        self._done = True

    def after_trial(self, study, trial, state, values) -> None:
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()
