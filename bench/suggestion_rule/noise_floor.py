"""Is 1.05x of the grid's best at the noise floor?  (needs compute.py grids noise)

python bench/suggestion_rule/noise_floor.py [--seeds 100 101 ...]
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import study_lib as L
from compute import NOISE_REPS


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(100, 108)))
    args = p.parse_args()
    store = L.Store()
    for label, seeds in ((f"seeds {args.seeds[0]}-{args.seeds[0] + 3}", args.seeds[:4]), (f"seeds {args.seeds[0]}-{args.seeds[-1]}", args.seeds)):
        rows = {k: [] for k in ("order", "full", "second", "left", "right", "both_nb", "either_nb", "n_within_grid")}
        per_opt = {}
        for o, e, s in L.cases(seeds):
            grid = np.array(store.grid(o, e, s))
            i = int(np.argmin(grid))
            best = grid[i]
            try:
                order = [store.val(o, e, s, s + r, L.GRID[i]) / best for r in NOISE_REPS]
                full = [store.val(o, e, s + r, s + r, L.GRID[i]) / best for r in NOISE_REPS]
            except KeyError:
                continue
            rows["order"] += order
            rows["full"] += full
            per_opt.setdefault(o, []).extend(full)
            rows["second"].append(np.sort(grid)[1] / best)
            nb = [grid[j] / best for j in (i - 1, i + 1) if 0 <= j < len(grid)]
            rows["left"].append(grid[i - 1] / best if i > 0 else np.inf)
            rows["right"].append(grid[i + 1] / best if i + 1 < len(grid) else np.inf)
            rows["both_nb"].append(max(nb) <= 1.05)
            rows["either_nb"].append(min(nb) <= 1.05)
            rows["n_within_grid"].append(int(np.sum(grid <= 1.05 * best)))
        n = len(rows["second"])
        if n == 0:
            continue
        hit = lambda v: f"{sum(x <= 1.05 for x in v)}/{len(v)} ({np.mean(np.array(v) <= 1.05):.0%})"
        print(f"== {label}: {n} cases (adam, sgd x 10/20/30 epochs), {len(NOISE_REPS)} re-runs each at the grid's best rate")
        print(
            f"re-run, same init, other batch order : within 1.05x {hit(rows['order'])}, median {statistics.median(rows['order']):.3f}, "
            f"p90 {np.percentile(rows['order'], 90):.3f}"
        )
        print(
            f"re-run, other init and batch order   : within 1.05x {hit(rows['full'])}, median {statistics.median(rows['full']):.3f}, "
            f"p90 {np.percentile(rows['full'], 90):.3f}"
        )
        for o, v in per_opt.items():
            print(f"    {o}: full re-run within 1.05x {hit(v)}, median {statistics.median(v):.3f}")
        print(f"2nd-best grid rate                   : within 1.05x {hit(rows['second'])}, median {statistics.median(rows['second']):.3f}")
        print(f"grid step below the best (-1/6 dec.) : within 1.05x {hit(rows['left'])}, median {statistics.median(rows['left']):.3f}")
        print(f"grid step above the best (+1/6 dec.) : within 1.05x {hit(rows['right'])}, median {statistics.median(rows['right']):.3f}")
        print(
            f"both neighbours within 1.05x: {sum(rows['both_nb'])}/{n}; at least one: {sum(rows['either_nb'])}/{n}; "
            f"grid rates within 1.05x per case: median {statistics.median(rows['n_within_grid'])}, min {min(rows['n_within_grid'])}"
        )
        print()  # fmt: skip


if __name__ == "__main__":
    main()
