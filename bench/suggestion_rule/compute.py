"""Fill the cache (/tmp/digits_study) for the digits study; every phase skips what is cached.

    python bench/suggestion_rule/compute.py [phase ...]   # phases: heldout noise train sweep_train sweep_heldout
"""

from __future__ import annotations

import sys

import numpy as np

import study_lib as L

HELDOUT = list(range(100, 108))
TRAIN = list(range(0, 16))
FRACTIONS = [10 ** (i / 12) for i in range(-30, -3)]  # 0.0032 .. 0.46, 12 per decade
NOISE_REPS = (1000, 2000, 3000)


def noise_specs(store, seeds):
    specs = []
    for o, e, s in L.cases(seeds):
        grid = store.grid(o, e, s)
        best_lr = L.GRID[int(np.argmin(grid))]
        for r in NOISE_REPS:
            specs.append((o, e, s, s + r, best_lr))  # batch order only
            specs.append((o, e, s + r, s + r, best_lr))  # init and batch order: the recipe run again
    return specs


def sweep_specs(store, seeds):
    specs = []
    for o, e, s in L.cases(seeds):
        msl = store.rangetest(o, e, s)["max_stable_lr"]
        specs += [(o, e, s, s, msl * f) for f in FRACTIONS]
        specs.append((o, e, s, s, store.rangetest(o, e, s)["suggestion"]))
    return specs


def main(phases):
    store = L.Store(jobs=2)
    if "heldout" in phases:
        store.ensure_rangetests(HELDOUT)
        store.ensure_grids(HELDOUT[:4], "grids 100-103")
        store.ensure(noise_specs(store, HELDOUT[:4]), "noise 100-103")
        store.ensure_grids(HELDOUT[4:], "grids 104-107")
        store.ensure(noise_specs(store, HELDOUT[4:]), "noise 104-107")
        store.ensure([(o, e, s, s, store.rangetest(o, e, s)["suggestion"]) for o, e, s in L.cases(HELDOUT)], "current rule 100-107")
    if "train" in phases:
        store.ensure_rangetests(TRAIN)
        store.ensure_grids(TRAIN, "grids 0-15")
    if "sweep_train" in phases:
        store.ensure(sweep_specs(store, TRAIN), "fraction sweep 0-15")
    if "sweep_heldout" in phases:
        store.ensure(sweep_specs(store, HELDOUT), "fraction sweep 100-107")


if __name__ == "__main__":
    main(sys.argv[1:] or ["heldout", "train", "sweep_train", "sweep_heldout"])
