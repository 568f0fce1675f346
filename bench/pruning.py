"""Curve pruning with and without the warmup's grace: how many configurations the median pruner cuts
that would have ended among the top quarter of the study.

Both arms judge the same curves. Each study runs once with curve pruning off (every trial trained to
its end, divergence guard on, tracking off), which gives every trial's full per-epoch curve and its
final value. The trials are then replayed, in order, through each arm's pruner on an in-memory
Optuna study, exactly as the trainer reports them (one value per epoch, then ``should_prune``):

- before: Optuna's MedianPruner as the study file configures it (``startup_trials``, ``warmup_epochs``);
- after:  the same pruner wrapped in :class:`autolr.pruning.WarmupGracePruner` (no cut inside a warmup).

"Top quarter" is the best quarter (rounded up) of the COMPLETE trials by final value. What the replay
leaves out: a pruned trial frees its budget, which the sampler would have spent elsewhere; both arms
here see the same proposals, so the counts compare the pruners alone.

    python bench/pruning.py [studies/quickstart.yaml studies/diabetes.yaml] [--trials N]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import tempfile
import time

import optuna

import autolr
from autolr import keys
from autolr.pruning import make_pruner

DEFAULT_STUDIES = ("studies/quickstart.yaml", "studies/diabetes.yaml")  # both search a warmup (wine.yaml has none)


def full_curves(path: str, trials: int | None) -> tuple[autolr.StudyConfig, list[optuna.trial.FrozenTrial]]:
    """Every trial of the study trained to its end (curve pruning off)."""
    config = autolr.load_study(path)
    config = dataclasses.replace(config, pruning=dataclasses.replace(config.pruning, curve="none"), trials=trials or config.trials)
    with tempfile.TemporaryDirectory() as folder:
        result = autolr.tune(config, storage=f"sqlite:///{folder}/bench.db", tracking_uri=None, progress=False)
    return config, result.trials


def replay(config: autolr.StudyConfig, trials: list[optuna.trial.FrozenTrial], *, warmup_grace: bool) -> set[int]:
    """The trial numbers the pruner would have cut, judging the stored curves in order."""
    armed = dataclasses.replace(config, pruning=dataclasses.replace(config.pruning, curve="median"))
    study = optuna.create_study(direction=config.direction, pruner=make_pruner(armed, warmup_grace=warmup_grace))
    cut = set()
    for stored in trials:
        if not stored.intermediate_values:
            continue
        trial = study.ask()
        trial.set_user_attr(keys.PARAMS, stored.user_attrs.get(keys.PARAMS, stored.params))
        for epoch, value in sorted(stored.intermediate_values.items()):
            trial.report(value, epoch)
            if trial.should_prune():
                cut.add(stored.number)
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            complete = stored.state == optuna.trial.TrialState.COMPLETE
            study.tell(trial, stored.value if complete else None, state=None if complete else optuna.trial.TrialState.PRUNED)
    return cut


def top_quarter(config: autolr.StudyConfig, trials: list[optuna.trial.FrozenTrial]) -> set[int]:
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and math.isfinite(t.value)]
    done.sort(key=lambda t: t.value, reverse=config.direction == "maximize")
    return {t.number for t in done[: math.ceil(len(done) / 4)]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="*", default=list(DEFAULT_STUDIES))
    parser.add_argument("--trials", type=int, help="trials per study (default: the study file's)")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"{'study':<12} {'trials':>6} {'top 1/4':>7} {'arm':<14} {'cut':>4} {'cut in top 1/4':>14} {'cut, has warmup':>15}")
    for path in args.studies:
        start = time.monotonic()
        config, trials = full_curves(path, args.trials)
        best = top_quarter(config, trials)
        in_warmup = {t.number for t in trials if (t.user_attrs.get(keys.PARAMS) or {}).get("warmup")}
        for arm, grace in (("median", False), ("median+grace", True)):
            cut = replay(config, trials, warmup_grace=grace)
            print(f"{config.name:<12} {len(trials):>6} {len(best):>7} {arm:<14} {len(cut):>4} {len(cut & best):>14} {len(cut & in_warmup):>15}")
        print(f"  ({path}: {time.monotonic() - start:.0f} s to train every trial to its end)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
