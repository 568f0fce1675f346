"""The sampler alone on the least-squares family: would refining inside the stable/unstable bracket help?

``bench/lsq_family.py`` trains every trial through autolr; this replays the same search with the
training replaced by full-batch gradient descent simulated in float64 (milliseconds a trial), so
a change to the sampler is measured on all 36 problems x 3 seeds in a minute of CPU. Per study:
the bounds ``lr: auto`` gives (the real range test on the problem), the range test's suggestion as
the first trial, 30 trials over lr x {constant, cosine}, a trial diverged (PRUNED, flagged for the
ceiling) once its loss exceeds 10x its first, as autolr's guard does. Arms:

- ``shipped``: ``make_sampler("tpe")``, TPE under the divergence ceiling;
- ``bracket``: the same, and once the three best finished trials crowd against the limit (all within
  a factor 1.5 of the ceiling, or of the upper bound while nothing diverged), a third of the
  proposals drawn log-uniformly between the lowest of them and that limit.

Figures: best loss / exact optimum per problem, median over study seeds 0-2, then median and worst
over problems.

    python bench/lsq_sampler_only.py [--steps 30 100 300] [--trials 30]
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
import warnings

import numpy as np
import optuna
import torch
import yaml
from lsq_family import CONDITIONS, SPECTRA, STEPS, STUDY, build_task, lr_multipliers, task_args
from optuna.trial import TrialState

from autolr import keys
from autolr.autobounds import lr_bounds_from, range_test_for
from autolr.config import parse_study
from autolr.sampler import CeilingSampler, lr_ceiling, make_sampler

CROWD = 1.5  # the best trials lie within this factor of the limit
SHARE = 1 / 3  # of the proposals, once they do


class BracketSampler(CeilingSampler):
    """The measured alternative (not shipped): refines between the best trials and the limit."""

    def _below_ceiling(self, study, trial, optimizer, lr, dist):
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        done = sorted((t for t in trials if t.state == TrialState.COMPLETE and "lr" in t.params), key=lambda t: t.value)
        limit = min(lr_ceiling(trials, optimizer)[1] or dist.high, dist.high)
        low = min((t.params["lr"] for t in done[:3]), default=limit)
        if len(done) >= 8 and low * CROWD >= limit and low < limit and self._rng.uniform() < SHARE:
            return float(math.exp(self._rng.uniform(math.log(low), math.log(limit))))
        return super()._below_ceiling(study, trial, optimizer, lr, dist)


def bracket_sampler(seed: int) -> BracketSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return BracketSampler(optuna.samplers.TPESampler(seed=seed, n_startup_trials=8, multivariate=True, group=True), seed=seed)


ARMS = {"shipped": lambda seed: make_sampler("tpe", seed=seed), "bracket": bracket_sampler}


def simulate(x: np.ndarray, y: np.ndarray, w0: np.ndarray, lr: float, factors: np.ndarray) -> float | None:
    """Final loss of full-batch gradient descent, or None once it diverged (autolr's guard: 10x the first loss)."""
    w, first = w0.copy(), None
    with np.errstate(over="ignore", invalid="ignore"):
        for factor in factors:
            loss = float(np.mean((x @ w - y) ** 2))
            first = loss if first is None else first
            if not loss <= 10.0 * first:
                return None
            w = w - (lr * factor) * (2.0 / len(x)) * (x.T @ (x @ w - y))
        loss = float(np.mean((x @ w - y) ** 2))
    return loss if math.isfinite(loss) else None


def study_best(problem: tuple, seed: int, sampler: optuna.samplers.BaseSampler, trials: int, bounds: tuple) -> float:
    condition, steps, spectrum, split = problem
    (low, high), suggestion = bounds
    task = build_task("least_squares", task_args(condition, spectrum, split), seed=seed)
    x, y = (t.double().numpy() for t in task.train_data.tensors)
    w0 = task.model.weight.detach().double().numpy().T
    study = optuna.create_study(sampler=sampler)
    study.enqueue_trial({"lr": suggestion})
    for _ in range(trials):
        trial = study.ask()
        lr = trial.suggest_float("lr", low, high, log=True)
        loss = simulate(x, y, w0, lr, lr_multipliers(trial.suggest_categorical("schedule", ["constant", "cosine"]), steps))
        if loss is None:
            trial.set_user_attr(keys.DIVERGED, True)
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, loss)
    return study.best_value / task.info["optimum"]


def lr_auto_bounds(problem: tuple, seed: int, trials: int) -> tuple:
    condition, steps, spectrum, split = problem
    text = STUDY.format(condition=condition, steps=steps, spectrum=spectrum, problem=split, seed=seed, trials=trials)
    result = range_test_for(parse_study(yaml.safe_load(text), path="lsq.yaml"), "sgd")
    return lr_bounds_from(result), result.suggestion


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=list(STEPS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=30)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    summary: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for problem in itertools.product(CONDITIONS, args.steps, SPECTRA, (0, 1)):
        bounds = {seed: lr_auto_bounds(problem, seed, args.trials) for seed in args.seeds}
        cells = []
        for arm, make in ARMS.items():
            ratios = [study_best(problem, seed, make(seed), args.trials, bounds[seed]) for seed in args.seeds]
            summary[arm].append(statistics.median(ratios))
            cells.append(f"{arm} {statistics.median(ratios):.4f}x ({' '.join(f'{r:.4f}' for r in ratios)})")
        print(f"condition {problem[0]:4d}, {problem[1]:3d} steps, {problem[2]:9s} problem seed {problem[3]}: " + "  ".join(cells), flush=True)
    for arm, ratios in summary.items():
        print(f"{arm:8s} best/optimum over problems (each a median over seeds): median {statistics.median(ratios):.4f}x, worst {max(ratios):.4f}x")
    wins = sum(b < s for s, b in zip(summary["shipped"], summary["bracket"], strict=True))
    losses = sum(b > s for s, b in zip(summary["shipped"], summary["bracket"], strict=True))
    print(f"bracket better on {wins}, worse on {losses} of {len(summary['shipped'])} problems")
    return 0


if __name__ == "__main__":
    sys.exit(main())
