"""How much three fresh seeds can tell apart on the benchmark's tasks, read off the dense-grid oracles
(``bench/oracle/<task>.json``: every cell trained on 6 seeds, the grid's 3 and the winners' 3 fresh
ones). Trains nothing.

Per task, over the 10 cells with the best 6-seed mean:

- ``spread``: one seed's standard deviation, as a share of the cell's mean;
- ``corr``: the mean correlation between two cells' per-seed deviations (the same seed draws the same
  initial weights and batches for every configuration, so the noise is largely shared);
- ``paired``: the spread of a difference between two cells taken on the same seeds, against taken on
  independent seeds (below 1: comparing on the same seeds, as the search does on the study's seed
  and the confirmation on its fresh seeds, sees through part of the noise);
- ``flips``: of the pairs of top cells whose 6-seed means differ by 4% to 15%, the share of the 20
  three-seed subsets on which the worse cell reads better: how often a 3-seed race picks a cell at
  least 4% worse, the floor of any confirmation on 3 seeds;
- then, per optimizer and schedule, its best cell's 6-seed mean as a multiple of the grid pick's: what
  a winner of that family can reach at best.

    python bench/seed_noise.py [--tasks digits digits_deep digits_wide breast_cancer]
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

ORACLE = Path(__file__).resolve().parent / "oracle"
TASKS = ("digits", "digits_deep", "digits_wide", "breast_cancer")


def per_seed(cell: dict) -> np.ndarray:
    return np.array(cell["values"] + cell["select_values"], dtype=float)


def noise(top: np.ndarray) -> tuple[float, float, float, float]:
    """``(spread, corr, paired, flips)`` of the rows of ``top`` (cells x seeds), as the module says."""
    spread = float((top.std(1, ddof=1) / top.mean(1)).mean())
    dev = top - top.mean(1, keepdims=True)
    pairs = list(itertools.combinations(range(len(top)), 2))
    corr = float(np.mean([np.corrcoef(dev[i], dev[j])[0, 1] for i, j in pairs]))
    paired = float(np.mean([np.std(top[i] - top[j], ddof=1) for i, j in pairs]) / np.mean([np.hypot(top[i].std(ddof=1), top[j].std(ddof=1)) for i, j in pairs]))
    subsets = list(itertools.combinations(range(top.shape[1]), 3))
    flipped = []
    for i, j in pairs:
        better, worse = (i, j) if top[i].mean() < top[j].mean() else (j, i)
        if 1.04 <= top[worse].mean() / top[better].mean() <= 1.15:
            flipped += [top[worse, list(s)].mean() < top[better, list(s)].mean() for s in subsets]
    return spread, corr, paired, float(np.mean(flipped)) if flipped else float("nan")


def families(grid: dict) -> dict[str, float]:
    """Optimizer and schedule -> its best cell's 6-seed mean over the grid pick's."""
    key = lambda c: (c["optimizer"], c["schedule"], c["lr"])  # noqa: E731
    pick = next(per_seed(c).mean() for c in grid["cells"] if key(c) == key(grid["pick"]))
    best: dict[str, float] = {}
    for cell in grid["cells"]:
        name, value = f"{cell['optimizer']} {cell['schedule']}", per_seed(cell).mean()
        if np.isfinite(value):
            best[name] = min(best.get(name, np.inf), value / pick)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    args = ap.parse_args()
    print(f"{'task':14} {'spread':>7} {'corr':>5} {'paired':>7} {'flips':>6}   best cell of each family / the grid pick (6 seeds)")
    for task in args.tasks:
        grid = json.loads((ORACLE / f"{task}.json").read_text())
        cells = [per_seed(c) for c in grid["cells"]]
        cells = [v for v in cells if np.all(np.isfinite(v))]
        top = np.array(sorted(cells, key=lambda v: v.mean())[:10])
        spread, corr, paired, flips = noise(top)
        reach = "  ".join(f"{name} {ratio:.3f}x" for name, ratio in sorted(families(grid).items(), key=lambda kv: kv[1]))
        print(f"{task:14} {spread:7.3f} {corr:5.2f} {paired:7.2f} {flips:6.1%}   {reach}")


if __name__ == "__main__":
    main()
