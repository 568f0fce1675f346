"""The dense-grid oracle of ``bench/efficiency.py``: per task, the best a dense grid of rates reaches.

Each task is one of autolr's built-in tasks trained in a plain PyTorch loop (what a user writes:
seeded model, shuffled mini-batches, ``optimizer.step(); scheduler.step()`` per batch) for a fixed
budget; the value is the final ``val_loss`` (the objective autolr uses by default), ``inf`` when the
run diverged. The grid: every optimizer x schedule of the task's space x ``RATES`` (23 rates
log-spaced over [1e-5, 1]) x 3 seeds: ``EVAL_SEEDS``, the very seeds ``bench/efficiency.py`` re-trains
every winner on (disjoint from every study, search-trial and confirmation seed it uses), so a winner's
figure compares like with like: seed noise is large here (the grid's best digits cell is 0.0808 on
seeds 900001-900003 and 0.0911 on 500001-500003), and a grid on other seeds would measure the seeds,
not the tuner. A cell's figure is its mean over the seeds and the oracle is the best cell, with the
grid's compute in training steps. Least squares needs no grid: its exact optimum is
known analytically (``task.info["optimum"]``).

The result is cached as JSON beside this script (``<task>.json``); ``bench/efficiency.py`` reads it.

    nice -n 5 python bench/oracle/make_oracle.py [--tasks digits breast_cancer lsq] [--seeds 3]
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
EVAL_SEEDS = (500_001, 500_002, 500_003)  # the grid's seeds and the winners' fresh seeds
# step and exponential at their default parameters: the grid and every searched arm share one space
SPACE_MLP = {
    "optimizer": {"sgd": {"momentum": 0.9}, "adam": {}},
    "schedule": {"constant": {}, "cosine": {}, "step": {"step_frac": 0.3, "gamma": 0.3}, "exponential": {"final_frac": 0.01}},
}
TASKS: dict[str, dict[str, Any]] = {
    "digits": {"task": "digits_mlp", "task_args": {}, "epochs": 20, "batch_size": 64, "space": SPACE_MLP, "lr": [1e-5, 1.0]},
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


def grid(name: str, seeds: tuple[int, ...]) -> dict[str, Any]:
    spec = TASKS[name]
    cells, t0 = [], time.perf_counter()
    for opt in spec["space"]["optimizer"]:
        for sched in spec["space"]["schedule"]:
            for lr in RATES:
                values = []
                for seed in seeds:
                    value, _ = plain_train(spec, run_config(opt, lr, sched, spec["space"]), seed)
                    values.append(value)
                mean = statistics.fmean(values) if all(math.isfinite(v) for v in values) else math.inf
                cells.append({"optimizer": opt, "schedule": sched, "lr": lr, "values": values, "mean": mean})
            print(f"{name}: {opt} {sched} best {min(c['mean'] for c in cells if c['optimizer'] == opt and c['schedule'] == sched):.4f}", file=sys.stderr)
    best = min(cells, key=lambda c: c["mean"])
    runs = len(cells) * len(seeds)
    return {
        "task": name, **spec, "rates": RATES, "seeds": list(seeds), "cells": cells,
        "best": {k: best[k] for k in ("optimizer", "schedule", "lr", "mean", "values")},
        "runs": runs, "steps_per_run": steps_per_run(spec), "compute_steps": runs * steps_per_run(spec),  # diverged runs count whole: a grid pays for them
        "seconds": round(time.perf_counter() - t0, 1),
    }  # fmt: skip


def exact(name: str) -> dict[str, Any]:
    spec = TASKS[name]
    task = BUILTIN_TASKS[spec["task"]](**spec["task_args"])
    return {"task": name, **spec, "best": {"mean": task.info["optimum"], "exact": True}, "compute_steps": None, "steps_per_run": steps_per_run(spec)}


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
        out = exact(name) if name == "lsq" else grid(name, seeds)
        (HERE / f"{name}.json").write_text(json.dumps(out, indent=1) + "\n")
        b = out["best"]
        print(
            f"{name}: oracle {b['mean']:.5f} ({b.get('optimizer', 'exact optimum')} {b.get('schedule', '')} lr {b.get('lr', '')}), compute {out['compute_steps']} steps"
        )


if __name__ == "__main__":
    main()
