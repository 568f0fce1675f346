"""LR range test: does autolr find the stability limit where it is, and a rate that trains well?

1. Least squares with a chosen Hessian spectrum (``least_squares``: eigenvalues log-spread over
   [L/100, L], L = 1), so that full-batch gradient descent is stable exactly below 2/L. SGD without
   momentum, 5 seeds (data and batch order), full batch and mini-batches of 32 (of 256), for a run of
   200 steps. Figures: autolr's ``max_stable_lr`` / (2/L), and, for comparison, the rate at which the
   classic stop rule (loss smoothed with 0.98 at 4x its minimum; fastai, Lightning) fires / (2/L).
   (Mini-batch SGD has no exact 2/L limit; its figure shows how the estimate moves under noise.)
2. ``digits_mlp`` (the built-in 8x8 digits MLP), batch 64, constant rate: a grid of 25 rates
   (1e-4 .. 1, 6 per decade), each trained for the whole run; then, per rule, one run at the rate the
   rule picks. Figures: the validation loss of that run / the grid's best, and the rule's range-test
   compute as a share of the grid's (samples through the model; a forward-only pass counts 1/3). Rules:
   autolr's suggestion, and the classic tools' steepest slope, valley and minimum/10, all read off one
   classic 100-step sweep (their compute: that sweep).
3. ``lr: auto``: a 30-trial study on least squares (the setting of ``bench/tuner.py``), 5 seeds: the
   best loss found / the exact optimum.

    python bench/finder.py [--seeds 4] [--epochs 10 20 30] [--optimizers adam sgd] [--jobs 2]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import math
import statistics
import sys
import time

import numpy as np
import torch

from autolr.finder import classic_sweep, common_rules, range_test
from autolr.optimizers import build_optimizer
from autolr.scheduler import StepScheduler
from autolr.tasks import build_task
from autolr.trainer import Trainer

OPTIMIZER_PARAMS = {"adam": {}, "adamw": {}, "sgd": {"momentum": 0.9}, "rmsprop": {}}
GRID = np.geomspace(1e-4, 1.0, 25).tolist()
DIGITS_BATCH = 64
LSQ_RUN_STEPS = 200
RULES = ("autolr", "steepest", "valley", "min_over_ten")


# --- least squares ---------------------------------------------------------------------------------


def least_squares_ratios(seed: int, batch_size: int) -> tuple[float, float]:
    """(autolr max_stable_lr, classic stop rate), both / (2/L); the classic one is inf when its stop rule
    never fired up to the end of its range (10 = 5x 2/L)."""
    task = build_task("least_squares", {"split_seed": seed}, seed=seed)
    limit = 2.0 / task.info["max_eig"]
    optimizer = build_optimizer("sgd", task.model.parameters(), 1e-3, {"momentum": 0.0})
    found = range_test(task.model, optimizer, task.loss_fn, task.train_data, batch_size=batch_size, run_steps=LSQ_RUN_STEPS, seed=seed)
    classic = classic_sweep(task.model, optimizer, task.loss_fn, task.train_data, batch_size=batch_size, seed=seed)
    stopped = classic.stopped_at if classic.stopped_at is not None else math.inf
    return found.max_stable_lr / limit, stopped / limit


def least_squares_section(seeds: int) -> list[str]:
    lines = [f"least squares, SGD without momentum, 2/L known exactly; seeds 0..{seeds - 1}"]
    lines.append(f"{'':46s}" + "".join(f"{f'seed {s}':>9s}" for s in range(seeds)) + f"{'median':>9s}{'worst':>9s}")
    for label, batch in (("full batch", 10**6), ("mini-batch 32", 32)):
        pairs = [least_squares_ratios(seed, batch) for seed in range(seeds)]
        for name, values in (("autolr max_stable_lr / (2/L)", [p[0] for p in pairs]), ("classic stop rule fires at / (2/L)", [p[1] for p in pairs])):
            worst = max(values, key=lambda v: abs(math.log(v)) if 0 < v < math.inf else math.inf)
            cells = [*values, statistics.median(values), worst]
            lines.append(f"{f'{label}: {name}':46s}" + "".join(f"{v:9.3f}" if math.isfinite(v) else f"{'never':>9s}" for v in cells))
    lines.append("(never: the classic stop rule did not fire up to its end rate, 10 = 5x 2/L)")
    return lines


# --- lr: auto --------------------------------------------------------------------------------------

AUTO_STUDY = """
name: bench-finder-auto-{seed}
task: least_squares
task_args: {{n_samples: 256, n_features: 20, max_eig: 1.0, condition: 100, noise: 0.3}}
train: {{epochs: 60, batch_size: 256}}
trials: 30
seed: {seed}
search:
  lr: auto
  optimizer: {{sgd: {{momentum: 0.0}}}}
  schedule: {{constant: {{}}, cosine: {{}}}}
pruning: {{divergence: true, curve: none}}
"""


def lr_auto_section(seeds: int) -> list[str]:
    """A 30-trial ``lr: auto`` study (the setting of bench/tuner.py, where plain TPE over [1e-4, 100]
    lands 1.30x from the optimum at the median): best loss / exact optimum."""
    import tempfile
    from pathlib import Path

    import optuna

    import autolr
    from autolr.tasks import least_squares

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    optimum = least_squares(n_samples=256, n_features=20, max_eig=1.0, condition=100, noise=0.3).info["optimum"]
    ratios = []
    with tempfile.TemporaryDirectory() as folder:
        for seed in range(seeds):
            path = Path(folder) / f"auto{seed}.yaml"
            path.write_text(AUTO_STUDY.format(seed=seed))
            result = autolr.tune(path, storage=f"sqlite:///{Path(folder) / f'auto{seed}.db'}", tracking_uri=None)
            ratios.append(result.best.value / optimum)
    return [
        "lr: auto, 30 trials, least squares (condition 100, 60 full-batch steps, constant or cosine): best loss / exact optimum",
        "".join(f"{f'seed {s}':>9s}" for s in range(seeds)) + f"{'median':>9s}{'worst':>9s}",
        "".join(f"{v:9.3f}" for v in ratios) + f"{statistics.median(ratios):9.3f}{max(ratios):9.3f}",
    ]


# --- digits ----------------------------------------------------------------------------------------


def train_val_loss(optimizer: str, lr: float, epochs: int, seed: int) -> float:
    """Validation loss after a constant-rate run (inf when it diverged)."""
    torch.set_num_threads(1)
    task = build_task("digits_mlp", {}, seed=seed)
    trainer = Trainer(epochs=epochs, batch_size=DIGITS_BATCH, device=torch.device("cpu"), seed=seed)
    opt = build_optimizer(optimizer, task.model.parameters(), lr, OPTIMIZER_PARAMS[optimizer])
    scheduler = StepScheduler(opt, total_steps=epochs * trainer.steps_per_epoch(task), schedule="constant")
    value = trainer.fit(task, opt, scheduler).final["val_loss"]
    return value if math.isfinite(value) else math.inf


def rule_rates(optimizer: str, epochs: int, seed: int) -> tuple[dict[str, float | None], dict[str, int]]:
    """Each rule's rate and the samples (forward-only at 1/3) its range test cost."""
    task = build_task("digits_mlp", {}, seed=seed)
    opt = build_optimizer(optimizer, task.model.parameters(), 1e-3, OPTIMIZER_PARAMS[optimizer])
    run_steps = epochs * math.ceil(len(task.train_data) / DIGITS_BATCH)
    found = range_test(task.model, opt, task.loss_fn, task.train_data, batch_size=DIGITS_BATCH, run_steps=run_steps, seed=seed)
    classic = classic_sweep(task.model, opt, task.loss_fn, task.train_data, batch_size=DIGITS_BATCH, seed=seed)
    rates = {"autolr": found.suggestion, **common_rules(classic.lrs, classic.losses)}
    cost = {"autolr": round(found.samples + found.forward_samples / 3), **{r: classic.samples for r in RULES[1:]}}
    return rates, cost


def digits_cases(pool, optimizers: list[str], epochs_list: list[int], seeds: int) -> list[dict]:
    """Every grid run is queued first, the range tests run here meanwhile, then the rules' runs."""
    keys = [(o, e, s) for o in optimizers for e in epochs_list for s in range(seeds)]
    grids = {k: [pool.submit(train_val_loss, k[0], lr, k[1], k[2]) for lr in GRID] for k in keys}
    rates = {k: rule_rates(*k) for k in keys}
    runs = {k: {r: pool.submit(train_val_loss, k[0], lr, k[1], k[2]) for r, lr in rates[k][0].items() if lr is not None} for k in keys}
    n_train = len(build_task("digits_mlp", {}, seed=0).train_data)
    cases = []
    for (optimizer, epochs, seed) in keys:
        grid = [job.result() for job in grids[optimizer, epochs, seed]]
        best = min(grid)
        rule_rate, cost = rates[optimizer, epochs, seed]
        cases.append({
            "optimizer": optimizer, "epochs": epochs, "seed": seed, "best": best, "best_lr": GRID[grid.index(best)],
            "rates": rule_rate, "ratios": {r: job.result() / best for r, job in runs[optimizer, epochs, seed].items()},
            "shares": {r: cost[r] / (len(GRID) * epochs * n_train) for r in rule_rate},
        })  # fmt: skip
    return cases


def digits_section(cases: list[dict]) -> list[str]:
    lines = [f"digits_mlp, batch {DIGITS_BATCH}, constant rate; grid: {len(GRID)} rates 1e-4..1 trained to the end"]
    lines.append("val loss at the rule's rate / grid best (rate in brackets); compute as a share of the grid's")
    lines.append(f"{'optimizer':9s} {'epochs':>6s} {'seed':>4s}  {'grid best':>18s}  " + "  ".join(f"{r:>18s}" for r in RULES))
    for c in cases:
        cells = []
        for r in RULES:
            ratio, rate = c["ratios"].get(r), c["rates"].get(r)
            cells.append(f"{'-':>18s}" if ratio is None else f"{_ratio(ratio):>7s} ({rate:8.2e})  ")
        lines.append(f"{c['optimizer']:9s} {c['epochs']:6d} {c['seed']:4d}  {c['best']:8.4f} ({c['best_lr']:7.1e})  " + "  ".join(cells))
    lines.append("")
    lines.append(f"{'rule':14s} {'median':>8s} {'worst':>8s} {'<= 1.05x':>9s} {'compute share (median)':>24s}")
    for r in RULES:
        ratios = [c["ratios"][r] for c in cases if r in c["ratios"]]
        shares = [c["shares"][r] for c in cases]
        within = sum(v <= 1.05 for v in ratios)
        lines.append(f"{r:14s} {_ratio(statistics.median(ratios)):>8s} {_ratio(max(ratios)):>8s} {f'{within}/{len(cases)}':>9s} {statistics.median(shares):23.2%}")
    return lines


def _ratio(value: float) -> str:
    if not math.isfinite(value):
        return "diverged"
    return f"{value:.3f}" if value < 1000 else "> 1000"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4, help="digits seeds (least squares always uses 5)")
    parser.add_argument("--epochs", type=int, nargs="+", default=[10, 20, 30])
    parser.add_argument("--optimizers", nargs="+", default=["adam", "sgd"], choices=sorted(OPTIMIZER_PARAMS))
    parser.add_argument("--jobs", type=int, default=2, help="worker processes for the training runs")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    print("\n".join(least_squares_section(5)), flush=True)
    print()
    print("\n".join(lr_auto_section(5)), flush=True)
    print()
    with concurrent.futures.ProcessPoolExecutor(args.jobs) as pool:
        cases = digits_cases(pool, args.optimizers, args.epochs, args.seeds)
    print("\n".join(digits_section(cases)))
    print(f"\n({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
