"""The dense-grid oracle of ``bench/efficiency.py``: per task, the best a dense grid of rates reaches.

Each task is one of autolr's built-in tasks trained in a plain PyTorch loop (what a user writes:
seeded model, shuffled mini-batches, ``optimizer.step(); scheduler.step()`` per batch) for a fixed
budget; the value is the final ``val_loss`` (the objective autolr uses by default), ``inf`` when the
run diverged. The grid: every optimizer x schedule of the task's space x ``RATES`` (23 rates
log-spaced over [1e-5, 1]), each cell trained on two sets of 3 seeds:

- ``SELECT_SEEDS`` (900001-900003), the grid's own: the cell a dense grid search hands back, ``pick``,
  is the best mean there, and the grid's compute (what ``bench/efficiency.py`` sets each tuner's
  against) is these runs;
- ``EVAL_SEEDS`` (500001-500003), the very seeds ``bench/efficiency.py`` re-trains every winner on
  (no study, search-trial or confirmation seed): ``pick``'s value there is the oracle, scored like
  every tuner's winner; ``best``, the best cell there, is hindsight (chosen on the seeds it is
  scored on: no tuner that never trains on them can expect to reach it).

Seed noise is large on these tasks: the digits cell the grid picks (Adam, constant, lr 0.0019) has
mean 0.0808 on its own seeds and 0.0911 on the fresh ones; a grid's best on its own seeds, divided
into a winner's value on other seeds, would measure the seeds, not the tuner.
Least squares needs no grid: its exact optimum is
known analytically (``task.info["optimum"]``).

The result is cached as JSON beside this script (``<task>.json``); ``bench/efficiency.py`` reads it.

    nice -n 5 python bench/oracle/make_oracle.py [--tasks digits digits_deep digits_wide breast_cancer lsq] [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autolr.hparams import RunConfig
from autolr.tasks import BUILTIN_TASKS

HERE = Path(__file__).resolve().parent
RATES = [float(r) for r in np.geomspace(1e-5, 1.0, 23)]
EVAL_SEEDS = (500_001, 500_002, 500_003)  # the winners' fresh seeds: every cell is scored on them too
SELECT_SEEDS = (900_001, 900_002, 900_003)  # the grid's own seeds: what a dense grid search would pick
# step and exponential at their default parameters: the grid and every searched arm share one space
SPACE_MLP = {
    "optimizer": {"sgd": {"momentum": 0.9}, "adam": {}},
    "schedule": {"constant": {}, "cosine": {}, "step": {"step_frac": 0.3, "gamma": 0.3}, "exponential": {"final_frac": 0.01}},
}
TASKS: dict[str, dict[str, Any]] = {
    "digits": {"task": "digits_mlp", "task_args": {}, "epochs": 20, "batch_size": 64, "space": SPACE_MLP, "lr": [1e-5, 1.0]},
    # a digits-like task the searches were never tuned on: a deeper, narrower MLP, half the epochs, smaller batches
    "digits_deep": {"task": "digits_mlp", "task_args": {"hidden": 64, "depth": 2}, "epochs": 10, "batch_size": 32, "space": SPACE_MLP, "lr": [1e-5, 1.0]},
    # a second held-out digits-like task, added with the confirmation's dedup and step back: wider, one hidden layer, 15 epochs, batch 128
    "digits_wide": {"task": "digits_mlp", "task_args": {"hidden": 256, "depth": 1}, "epochs": 15, "batch_size": 128, "space": SPACE_MLP, "lr": [1e-5, 1.0]},
    "breast_cancer": {"task": "breast_cancer_mlp", "task_args": {}, "epochs": 20, "batch_size": 64, "space": SPACE_MLP, "lr": [1e-5, 1.0]},
    # bench/tuner.py's problem: full-batch SGD, 60 steps, stable exactly below lr 2
    "lsq": {
        "task": "least_squares",
        "task_args": {"n_samples": 256, "n_features": 20, "max_eig": 1.0, "condition": 100.0, "noise": 0.3},
        "epochs": 60,
        "batch_size": 256,
        "space": {"optimizer": {"sgd": {"momentum": 0.0}}, "schedule": {"constant": {}, "cosine": {}}},
        "lr": [1e-4, 100.0],
    },
}


def run_config(optimizer: str, lr: float, schedule: str, space: Mapping[str, Any]) -> RunConfig:
    return RunConfig(optimizer, lr, schedule, optimizer_params=dict(space["optimizer"][optimizer]), schedule_params=dict(space["schedule"][schedule]))


def plain_train(spec: Mapping[str, Any], build: Any, seed: int, *, on_epoch: Any = None) -> tuple[float, int]:
    """``(final val_loss, steps)`` of a plain PyTorch loop; ``build`` has ``build_optimizer`` and
    ``build_scheduler`` (a RunConfig or ``autolr.load_best``'s BestConfig). A non-finite loss ends the
    run: inf. ``on_epoch(epoch, val_loss)`` may raise to stop it (a pruner)."""
    torch.manual_seed(seed)
    task = BUILTIN_TASKS[spec["task"]](**spec["task_args"])
    model, loss_fn = task.model, task.loss_fn
    x, y = task.train_data.tensors
    xv, yv = task.val_data.tensors
    n, bs = len(x), spec["batch_size"]
    per_epoch = math.ceil(n / bs)
    total = spec["epochs"] * per_epoch
    optimizer = build.build_optimizer(model.parameters())
    scheduler = build.build_scheduler(optimizer, total)
    g = torch.Generator().manual_seed(seed)
    steps = 0
    for epoch in range(1, spec["epochs"] + 1):
        model.train()
        if hasattr(optimizer, "train"):
            optimizer.train()  # schedule-free: train at its training weights
        order = torch.randperm(n, generator=g) if bs < n else torch.arange(n)
        for i in range(0, n, bs):
            idx = order[i : i + bs]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), y[idx])
            if not torch.isfinite(loss):
                return math.inf, steps
            loss.backward()
            optimizer.step()
            scheduler.step()
            steps += 1
        model.eval()
        if hasattr(optimizer, "eval"):
            optimizer.eval()  # schedule-free: evaluate at its averaged weights
        with torch.no_grad():
            val = float(loss_fn(model(xv), yv))
        if not math.isfinite(val):
            return math.inf, steps
        if on_epoch is not None:
            on_epoch(epoch, val)
    return val, steps


def steps_per_run(spec: Mapping[str, Any]) -> int:
    task = BUILTIN_TASKS[spec["task"]](**spec["task_args"])
    return spec["epochs"] * math.ceil(len(task.train_data) / spec["batch_size"])


def grid(name: str, seeds: tuple[int, ...], select_seeds: tuple[int, ...]) -> dict[str, Any]:
    """Every cell on ``seeds`` (the winners' fresh seeds) and on ``select_seeds`` (the grid's own)."""
    spec = TASKS[name]
    cells, t0 = [], time.perf_counter()
    for opt in spec["space"]["optimizer"]:
        for sched in spec["space"]["schedule"]:
            for lr in RATES:
                cell: dict[str, Any] = {"optimizer": opt, "schedule": sched, "lr": lr}
                for key, group in (("", seeds), ("select_", select_seeds)):
                    values = [plain_train(spec, run_config(opt, lr, sched, spec["space"]), seed)[0] for seed in group]
                    cell[f"{key}values"], cell[f"{key}mean"] = values, _mean(values)
                cells.append(cell)
            print(f"{name}: {opt} {sched} best {min(c['mean'] for c in cells if c['optimizer'] == opt and c['schedule'] == sched):.4f}", file=sys.stderr)
    return summary(name, cells, seeds, select_seeds, seconds=time.perf_counter() - t0)


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if all(math.isfinite(v) for v in values) else math.inf


def summary(name: str, cells: list[dict[str, Any]], seeds: tuple[int, ...], select_seeds: tuple[int, ...], *, seconds: float) -> dict[str, Any]:
    """``pick``: the cell a dense grid search hands back (best on its own seeds), with its value on the
    fresh seeds; ``best``: the best cell on the fresh seeds themselves (hindsight: chosen on the very
    seeds it is scored on, out of reach of any tuner that never trains on them)."""
    spec = TASKS[name]
    pick = min(cells, key=lambda c: c["select_mean"])
    best = min(cells, key=lambda c: c["mean"])
    runs = len(cells) * len(select_seeds)  # the grid as a tuner: every cell on its own seeds
    keep = ("optimizer", "schedule", "lr", "mean", "values", "select_mean")
    return {
        "task": name, **spec, "rates": RATES, "seeds": list(seeds), "select_seeds": list(select_seeds), "cells": cells,
        "pick": {k: pick[k] for k in keep}, "best": {k: best[k] for k in keep},
        "runs": runs, "steps_per_run": steps_per_run(spec), "compute_steps": runs * steps_per_run(spec),  # diverged runs count whole: a grid pays for them
        "seconds": round(seconds, 1),
    }  # fmt: skip


def exact(name: str) -> dict[str, Any]:
    spec = TASKS[name]
    task = BUILTIN_TASKS[spec["task"]](**spec["task_args"])
    optimum = {"mean": task.info["optimum"], "exact": True}
    return {"task": name, **spec, "pick": optimum, "best": optimum, "compute_steps": None, "steps_per_run": steps_per_run(spec)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--time-one", action="store_true", help="time one cell (one rate, every seed) per task and stop")
    args = ap.parse_args()
    torch.set_num_threads(1)
    seeds = EVAL_SEEDS[: args.seeds]
    for name in args.tasks:
        spec = TASKS[name]
        if args.time_one:
            t0 = time.perf_counter()
            opt = next(iter(spec["space"]["optimizer"]))
            plain_train(spec, run_config(opt, 1e-2, "cosine", spec["space"]), seeds[0])
            n = len(RATES) * len(seeds) * sum(1 for _ in spec["space"]["optimizer"]) * len(spec["space"]["schedule"])
            dt = time.perf_counter() - t0
            print(f"{name}: one run {dt:.2f} s ({steps_per_run(spec)} steps); a full grid of {n} runs about {dt * n / 60:.1f} min")
            continue
        out = exact(name) if name == "lsq" else grid(name, seeds, SELECT_SEEDS[: args.seeds])
        (HERE / f"{name}.json").write_text(json.dumps(out, indent=1) + "\n")
        b = out["pick"]
        print(
            f"{name}: grid pick {b['mean']:.5f} on fresh seeds ({b.get('optimizer', 'exact optimum')} {b.get('schedule', '')} lr {b.get('lr', '')}); hindsight {out['best']['mean']:.5f}; {out['compute_steps']} steps"
        )


if __name__ == "__main__":
    main()
