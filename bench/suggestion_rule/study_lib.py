"""Cached training runs and range tests on digits_mlp (the setting of bench/finder.py).

Every constant-rate run is keyed by (optimizer, epochs, task seed, trainer seed, lr rounded to 6
significant digits) and stored in /tmp/digits_study/runs.json; range tests in rangetests.json.
With task seed == trainer seed a run is exactly bench/finder.py's ``train_val_loss``.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # bench/ : bench/finder.py as module ``finder``, bench/classic_sweep.py

import finder as bf

from autolr.finder import range_test
from autolr.optimizers import build_optimizer
from autolr.tasks import build_task

CACHE = Path(os.environ.get("DIGITS_STUDY_DIR", "/tmp/digits_study"))
CACHE.mkdir(parents=True, exist_ok=True)
RUNS_FILE = CACHE / "runs.json"
RT_FILE = CACHE / "rangetests.json"
TASK = "digits_mlp"
BATCH = 64
GRID = bf.GRID
OPTS = ("adam", "sgd")
EPOCHS = (10, 20, 30)
N_TRAIN = 1347
STEPS_PER_EPOCH = math.ceil(N_TRAIN / BATCH)  # 22


def run_key(opt, epochs, task_seed, trainer_seed, lr) -> str:
    return f"{opt}|{epochs}|{task_seed}|{trainer_seed}|{lr:.6g}"


def train(opt: str, epochs: int, task_seed: int, trainer_seed: int, lr: float) -> float:
    """bench/finder.py's train_val_loss with the init (task seed) and batch order (trainer seed) apart."""
    return bf.train_val_loss(TASK, opt, float(f"{lr:.6g}"), epochs, task_seed, order_seed=trainer_seed, batch=BATCH)


def rangetest(opt: str, epochs: int, seed: int, tolerance: float | None = None) -> dict:
    """bench/finder.py's range test (rule_rates' autolr part), with the whole result kept."""
    torch.set_num_threads(1)
    task = build_task(TASK, {}, seed=seed)
    optimizer = build_optimizer(*bf._optimizer(opt, task, 1e-3))
    found = range_test(
        task.model, optimizer, task.train_data, loss_fn=task.loss_fn, batch_size=BATCH, run_steps=epochs * STEPS_PER_EPOCH, seed=seed, tolerance=tolerance
    )
    out = found.to_dict()
    out["cost"] = found.samples + found.forward_samples / 3
    return out


def _load(path: Path) -> dict:
    if path.exists():
        return json.loads(path.read_text())
    return {}


def _save(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, default=lambda v: None))
    tmp.replace(path)


def _enc(v: float):
    return v if math.isfinite(v) else "inf"


def _dec(v) -> float:
    return math.inf if v in ("inf", None) else float(v)


class Store:
    """All runs and range tests; ``ensure`` trains what is missing on a 2-process pool."""

    def __init__(self, jobs: int = 2) -> None:
        self.runs = _load(RUNS_FILE)
        self.rts = _load(RT_FILE)
        self.jobs = jobs

    def val(self, opt, epochs, task_seed, trainer_seed, lr) -> float:
        return _dec(self.runs[run_key(opt, epochs, task_seed, trainer_seed, lr)])

    def has(self, opt, epochs, task_seed, trainer_seed, lr) -> bool:
        return run_key(opt, epochs, task_seed, trainer_seed, lr) in self.runs

    def ensure(self, specs, label: str = "") -> None:
        """specs: (opt, epochs, task_seed, trainer_seed, lr); trains the missing ones."""
        todo = {}
        for s in specs:
            k = run_key(*s)
            if k not in self.runs:
                todo[k] = s
        if not todo:
            return
        started = time.perf_counter()
        print(f"[{label}] training {len(todo)} runs", flush=True)
        with concurrent.futures.ProcessPoolExecutor(self.jobs) as pool:
            futures = {pool.submit(train, *s): k for k, s in todo.items()}
            for i, f in enumerate(concurrent.futures.as_completed(futures), 1):
                self.runs[futures[f]] = _enc(f.result())
                if i % 200 == 0:
                    _save(RUNS_FILE, self.runs)
                    print(f"[{label}] {i}/{len(todo)} ({time.perf_counter() - started:.0f} s)", flush=True)
        _save(RUNS_FILE, self.runs)
        print(f"[{label}] done {len(todo)} runs in {time.perf_counter() - started:.0f} s", flush=True)

    def rangetest(self, opt, epochs, seed) -> dict:
        k = f"{opt}|{epochs}|{seed}"
        if k not in self.rts:
            self.rts[k] = rangetest(opt, epochs, seed)
            _save(RT_FILE, self.rts)
        return self.rts[k]

    def ensure_rangetests(self, seeds) -> None:
        todo = [(o, e, s) for o in OPTS for e in EPOCHS for s in seeds if f"{o}|{e}|{s}" not in self.rts]
        if not todo:
            return
        with concurrent.futures.ProcessPoolExecutor(self.jobs) as pool:
            for key, res in zip(todo, pool.map(rangetest, *zip(*todo))):
                self.rts["|".join(map(str, key))] = res
        _save(RT_FILE, self.rts)

    def grid(self, opt, epochs, seed) -> list[float]:
        return [self.val(opt, epochs, seed, seed, lr) for lr in GRID]

    def ensure_grids(self, seeds, label="grids") -> None:
        self.ensure([(o, e, s, s, lr) for o in OPTS for e in EPOCHS for s in seeds for lr in GRID], label)


def cases(seeds):
    return [(o, e, s) for o in OPTS for e in EPOCHS for s in seeds]


def budget_share(cost: float, epochs: int) -> float:
    """bench/finder.py's _case share: cost / (25 runs x epochs x n_train samples)."""
    return cost / (len(GRID) * epochs * N_TRAIN)
