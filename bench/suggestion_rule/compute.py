"""Fill the cache (/tmp/digits_study) for the digits study; every phase skips what is cached.

    python bench/suggestion_rule/compute.py [phase ...]   # phases: grids dense more noise (default: all)

- grids: the 25-rate grid of bench/finder.py for Adam and SGD (momentum 0.9), 10/20/30 epochs, on the
  fitting seeds (0-15, 200-215) and the held-out ones (100-107);
- dense: each of those cases again at 24 rates per decade within +-0.75 decade of its grid's best;
- more: grid and dense curve for SGD with momentum 0 and 0.5 and RMSprop on seeds 0-9;
- noise: the held-out grids' best rates trained again with other batch orders (noise_floor.py).
"""

from __future__ import annotations

import sys

import numpy as np
import study_lib as L

FIT = list(range(16)) + list(range(200, 216))
HELDOUT = list(range(100, 108))
MORE_OPTS = ("sgd-plain", "sgd-m0.5", "rmsprop")
MORE_SEEDS = list(range(10))
NOISE_REPS = (1000, 2000, 3000)
DENSE_PER_DECADE = 24  # the 25-rate grid (6 per decade) is every fourth of these
DENSE_HALF_WIDTH = 18  # rates each side of the grid's best: +-0.75 decade


def dense_rates(best_lr: float) -> list[float]:
    k = round(DENSE_PER_DECADE * np.log10(best_lr / L.GRID[0]))
    return [L.GRID[0] * 10 ** (j / DENSE_PER_DECADE) for j in range(k - DENSE_HALF_WIDTH, k + DENSE_HALF_WIDTH + 1)]


def grid_specs(opts, seeds):
    return [(o, e, s, s, lr) for o in opts for e in L.EPOCHS for s in seeds for lr in L.GRID]


def dense_specs(store, opts, seeds):
    specs = []
    for o in opts:
        for e in L.EPOCHS:
            for s in seeds:
                grid = store.grid(o, e, s)
                specs += [(o, e, s, s, lr) for lr in dense_rates(L.GRID[int(np.argmin(grid))])]
    return specs


def noise_specs(store, seeds):
    specs = []
    for o, e, s in L.cases(seeds):
        best_lr = L.GRID[int(np.argmin(store.grid(o, e, s)))]
        for r in NOISE_REPS:
            specs.append((o, e, s, s + r, best_lr))  # batch order only
            specs.append((o, e, s + r, s + r, best_lr))  # init and batch order: the recipe run again
    return specs


def main(phases):
    store = L.Store(jobs=2)
    if "grids" in phases:
        store.ensure(grid_specs(L.OPTS, HELDOUT + FIT), "grids")
    if "dense" in phases:
        store.ensure(dense_specs(store, L.OPTS, HELDOUT + FIT), "dense")
    if "more" in phases:
        store.ensure(grid_specs(MORE_OPTS, MORE_SEEDS), "grids, other optimizers")
        store.ensure(dense_specs(store, MORE_OPTS, MORE_SEEDS), "dense, other optimizers")
    if "noise" in phases:
        store.ensure(noise_specs(store, HELDOUT), "noise floor")


if __name__ == "__main__":
    main(sys.argv[1:] or ["grids", "dense", "more", "noise"])
