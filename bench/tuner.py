"""Tuner quality on least squares with a known optimum: autolr against the plain Optuna script a user writes.

Task: ``least_squares`` (Hessian eigenvalues log-spread over [1/condition, 1], so full-batch gradient
descent diverges above lr = 2 exactly; condition 100 by default), 60 full-batch steps of SGD, lr
searched over [1e-4, 100] with constant and cosine schedules, 30 trials, 5 seeds. The figure is best
loss found / exact optimum (1.00 is perfect). Every arm uses the same trainer and the same trials; the
autolr arms run with ``confirm: false``, so no arm spends compute beyond its trials. The arms run
interleaved, seed by seed (in a rotated order), so a slow or loaded stretch of the machine falls on all.

- plain:             ``optuna.create_study()`` with the default TPESampler, every trial trained to the
                     end, a non-finite final loss returned as ``inf`` (what a user writes so that a
                     diverged trial ranks last instead of failing);
- autolr guard only: ``autolr.tune`` with ``sampler: {name: tpe, ceiling: false}``: the divergence
                     guard prunes a diverged trial within steps, the sampler is autolr's TPE alone;
- autolr:            ``autolr.tune`` as shipped: the guard and the sampler's learned ceiling.

It also prints the share of training steps that went to diverged trials (plain: a final loss not
finite or above the guard's 10x the initial loss; autolr: the trials its guard stopped).

    python bench/tuner.py [--seeds 5] [--trials 30] [--condition 100] [--epochs 60]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch

import autolr
from autolr import keys
from autolr.config import PruningConfig
from autolr.hparams import RunConfig
from autolr.tasks import least_squares
from autolr.trainer import Trainer

STUDY = """
name: bench-lsq-{seed}-{arm}
task: least_squares
task_args: {{n_samples: 256, n_features: 20, max_eig: 1.0, condition: {condition}, noise: 0.3}}
train: {{epochs: {epochs}, batch_size: 256}}
trials: {trials}
seed: {seed}
sampler: {{name: tpe, ceiling: {ceiling}}}
search:
  lr: {{low: 1.0e-4, high: 100.0}}
  optimizer: {{sgd: {{momentum: 0.0}}}}
  schedule: {{constant: {{}}, cosine: {{}}}}
pruning: {{divergence: true, curve: none}}
confirm: false
"""
TASK_ARGS = dict(n_samples=256, n_features=20, max_eig=1.0, noise=0.3)
ARMS = ("plain optuna tpe", "autolr guard only", "autolr")


def plain_optuna(seed: int, trials: int, condition: float, epochs: int) -> tuple[float, int, int]:
    """(best loss, steps on diverged trials, all steps) of a plain Optuna TPE script."""
    steps = {"diverged": 0, "all": 0}

    def objective(trial: optuna.Trial) -> float:
        run = RunConfig(
            "sgd",
            trial.suggest_float("lr", 1e-4, 100.0, log=True),
            trial.suggest_categorical("schedule", ["constant", "cosine"]),
            optimizer_params={"momentum": 0.0},
        )
        torch.manual_seed(seed)
        task = least_squares(split_seed=0, condition=condition, **TASK_ARGS)
        x, y = task.train_data.tensors
        with torch.no_grad():
            start = float(task.loss_fn(task.model(x), y))
        opt = run.build_optimizer(task.model.parameters())
        value = Trainer(epochs=epochs, batch_size=256).fit(task, opt, run.build_scheduler(opt, epochs)).final["val_loss"]
        steps["all"] += epochs
        if not math.isfinite(value) or value > PruningConfig.loss_factor * start:
            steps["diverged"] += epochs
        return value if math.isfinite(value) else math.inf  # a diverged trial ranks last; NaN would fail it

    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(objective, n_trials=trials)
    return study.best_value, steps["diverged"], steps["all"]


def autolr_tune(seed: int, trials: int, condition: float, epochs: int, folder: Path, *, ceiling: bool) -> tuple[float, int, int]:
    arm = "ceiling" if ceiling else "guard"
    path = folder / f"lsq{seed}-{arm}.yaml"
    path.write_text(STUDY.format(seed=seed, arm=arm, trials=trials, condition=condition, epochs=epochs, ceiling=str(ceiling).lower()))
    result = autolr.tune(path, storage=f"sqlite:///{folder / f'lsq{seed}-{arm}.db'}", tracking_uri=None, progress=False)
    steps = [(t.user_attrs.get(keys.STEPS, 0), bool(t.user_attrs.get(keys.DIVERGED))) for t in result.trials]
    return result.best.value, sum(s for s, d in steps if d), sum(s for s, _ in steps)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--condition", type=float, default=100.0, help="Hessian condition number")
    parser.add_argument("--epochs", type=int, default=60, help="full-batch steps per trial")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    optimum = least_squares(condition=args.condition, **TASK_ARGS).info["optimum"]
    rows: dict[str, list[tuple[float, float]]] = {name: [] for name in ARMS}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        runs = {
            "plain optuna tpe": lambda seed: plain_optuna(seed, args.trials, args.condition, args.epochs),
            "autolr guard only": lambda seed: autolr_tune(seed, args.trials, args.condition, args.epochs, Path(tmp), ceiling=False),
            "autolr": lambda seed: autolr_tune(seed, args.trials, args.condition, args.epochs, Path(tmp), ceiling=True),
        }
        for seed in range(args.seeds):
            for name in ARMS[seed % len(ARMS) :] + ARMS[: seed % len(ARMS)]:  # rotated: no arm always runs first
                best, diverged, total = runs[name](seed)
                rows[name].append((best / optimum, diverged / total))
                print(f"seed {seed} {name:17s} best/optimum {best / optimum:6.3f}  diverged steps {diverged / total:6.1%}", flush=True)
    print(
        f"\nleast squares (condition {args.condition:g}, {args.epochs} steps), {args.trials} trials, {args.seeds} seeds, "
        f"exact optimum {optimum:.5f} ({time.perf_counter() - started:.0f} s)"
    )
    for name, values in rows.items():
        ratios = [r for r, _ in values]
        shares = [s for _, s in values]
        print(
            f"{name:17s} best/optimum: median {statistics.median(ratios):.3f}x, worst {max(ratios):.3f}x; "
            f"steps on diverged trials: median {statistics.median(shares):.1%}, worst {max(shares):.1%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
