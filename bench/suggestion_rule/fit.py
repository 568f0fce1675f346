"""How the probe verdict and the suggestion constants were chosen (digits_mlp), from cached runs.

Needs ``compute.py`` (grids and dense curves; about 35 minutes on two processes the first time).
Every case (optimizer, epochs, seed) has its validation loss at the 25 grid rates and at 24 rates per
decade within +-0.75 decade of the grid's best; a rule's rate is scored by interpolating that curve
(log lr -> log(val loss / grid best)), so that any rule can be scored without training again.
``bench/finder.py`` then trains at the shipped rule's exact rates on the held-out seeds.

1. Verdict variants (the module constants of ``autolr.finder._verdict``): the seed-to-seed spread of
   ``max_stable_lr`` (the seeds change the initial weights and the batch order, not the data, so the
   limit should hardly move), and the hits within 1.05x of the grid's best of a fraction rule refitted
   per variant, 5-fold cross-validated by seed over 40 seeds; beside them the ceiling of any rule that
   reads the range test on digits: one fixed rate per (optimizer, epochs), also cross-validated.
2. The shipped constants: a shared decay and a fraction per family fitted on seeds 0-15 and 200-215
   (Adam, SGD momentum 0.9), the fractions at momentum 0 and 0.5 and RMSprop's on seeds 0-9, the
   momentum exponent through the three SGD points; scored on the held-out seeds 100-107.
3. What is left: each seed's own best rate against the others', and what of the range test follows it.

    python bench/suggestion_rule/fit.py
"""

from __future__ import annotations

import contextlib
import json
import math
import statistics

import numpy as np
import study_lib as L
import torch
from compute import FIT, HELDOUT, MORE_OPTS, MORE_SEEDS, dense_rates

import autolr.finder as F
from autolr.finder import _verdict
from autolr.finder._range_test import MINI_BATCH_TOLERANCE
from autolr.optimizers import build_optimizer

VARIANTS = {  # name: (START_RISE, CLIMB_SHARE)
    "before (rise 1.25, climb share 0.2)": (1.25, 0.2),
    "rise above the start, climb share 0.35": (1.0, 0.35),
    "shipped (rise above the start, climb share 0.5)": (F.START_RISE, F.CLIMB_SHARE),
    "rise above the start, no climb test": (1.0, math.inf),
}
ALL_SEEDS = FIT + HELDOUT
A_GRID = np.geomspace(0.002, 1.0, 260)
DECAYS = np.round(np.arange(0.4, 0.91, 0.1), 2)
MSL_FILE = L.CACHE / "msl.json"


@contextlib.contextmanager
def verdict(start_rise: float, climb_share: float):
    saved = _verdict.START_RISE, _verdict.CLIMB_SHARE  # read by the verdict at each probe, from its own module
    _verdict.START_RISE, _verdict.CLIMB_SHARE = start_rise, climb_share
    try:
        yield
    finally:
        _verdict.START_RISE, _verdict.CLIMB_SHARE = saved


class Limits:
    """max_stable_lr per (variant, optimizer, seed), cached; the limit does not depend on the epochs."""

    def __init__(self) -> None:
        self.data = json.loads(MSL_FILE.read_text()) if MSL_FILE.exists() else {}

    def __call__(self, variant: tuple[float, float], opt: str, seed: int) -> float:
        key = f"{variant}|{opt}|{seed}"
        if key not in self.data:
            with verdict(*variant):
                self.data[key] = L.rangetest(opt, 10, seed)["max_stable_lr"]
            MSL_FILE.write_text(json.dumps(self.data))
        return self.data[key]


class Curves:
    def __init__(self, store: L.Store) -> None:
        self.store, self.cache = store, {}

    def ratio(self, case: tuple[str, int, int], lr: float) -> float:
        if case not in self.cache:
            o, e, s = case
            grid = self.store.grid(o, e, s)
            rates = sorted(set(dense_rates(L.GRID[int(np.argmin(grid))])) | set(L.GRID))
            points = sorted((math.log(r), math.log(min(self.store.val(o, e, s, s, r) / min(grid), 1e6))) for r in rates if self.store.has(o, e, s, s, r))
            self.cache[case] = (np.array([p[0] for p in points]), np.array([p[1] for p in points]))
        x, y = self.cache[case]
        return float(math.exp(np.interp(math.log(lr), x, y)))


def fraction(a: float, d: float, epochs: int) -> float:
    """The fraction of the limit a rule with these constants gives a run of ``epochs`` at batch 64."""
    return F.SuggestionRule(at_1000_steps=a, decay=d).fraction(epochs * L.STEPS_PER_EPOCH)


def hits(ratios) -> int:
    return sum(r <= 1.05 for r in ratios)


def best_a(curves, limit, opt, seeds, d):
    """The fraction at 1000 steps with the most hits (smoothed over +-3 of 80 per decade), then the lowest median."""
    cases = [(opt, e, s) for e in L.EPOCHS for s in seeds]
    table = np.array([[curves.ratio(c, limit(opt, c[2]) * fraction(a, d, c[1])) for c in cases] for a in A_GRID])
    score = np.convolve((table <= 1.05).sum(1).astype(float), np.ones(7) / 7, mode="same") - 1e-2 * np.median(table, 1)
    k = int(np.argmax(score))
    return float(A_GRID[k]), float(score[k])


def fit_shared(curves, limit, seeds):
    """One decay for Adam and SGD (momentum 0.9), a fraction each."""
    best = None
    for d in DECAYS:
        fits = {o: best_a(curves, limit, o, seeds, d) for o in L.OPTS}
        total = sum(v[1] for v in fits.values())
        if best is None or total > best[0]:
            best = (total, float(d), {o: v[0] for o, v in fits.items()})
    return best[1], best[2]


def scored(curves, limit, rule, seeds):
    d, a = rule
    return [curves.ratio((o, e, s), limit(o, s) * fraction(a[o], d, e)) for o in L.OPTS for e in L.EPOCHS for s in seeds]


def part1(curves, limits):
    print(f"== 1. verdict variants: Adam and SGD (momentum 0.9), 10/20/30 epochs, 5-fold CV by seed over {len(ALL_SEEDS)} seeds")
    folds = [ALL_SEEDS[i::5] for i in range(5)]
    for name, variant in VARIANTS.items():
        limit = lambda o, s, v=variant: limits(v, o, s)
        spread = {o: math.exp(float(np.std([math.log(limit(o, s)) for s in ALL_SEEDS]))) for o in L.OPTS}
        ratios = []
        for fold in folds:
            rule = fit_shared(curves, limit, [s for s in ALL_SEEDS if s not in fold])
            ratios += scored(curves, limit, rule, fold)
        print(f"{name:50s} limit spread (x, 1 sd) adam {spread['adam']:.2f} sgd {spread['sgd']:.2f}; CV hits {hits(ratios)}/{len(ratios)}, "
              f"median {statistics.median(ratios):.3f}", flush=True)  # fmt: skip
    ratios = []
    rates = np.geomspace(1e-4, 1.0, 145)
    for fold in folds:
        train = [s for s in ALL_SEEDS if s not in fold]
        for o in L.OPTS:
            for e in L.EPOCHS:
                table = np.array([[curves.ratio((o, e, s), r) for s in train] for r in rates])
                score = np.convolve((table <= 1.05).sum(1).astype(float), np.ones(5) / 5, mode="same") - 1e-2 * np.median(table, 1)
                ratios += [curves.ratio((o, e, s), float(rates[int(np.argmax(score))])) for s in fold]
    print(f"{'ceiling: one fixed rate per (optimizer, epochs)':50s} CV hits {hits(ratios)}/{len(ratios)}, median {statistics.median(ratios):.3f}")
    seeds = FIT[:16] + HELDOUT
    for tolerance in (None, 1.25):  # the bisection's end with mini-batches: 1.5x (the default) or 1.25x
        tests = {o: [L.rangetest(o, 10, s, tolerance=tolerance) for s in seeds] for o in L.OPTS}
        spread = {o: math.exp(float(np.std([math.log(t["max_stable_lr"]) for t in ts]))) for o, ts in tests.items()}
        steps = statistics.median(t["steps"] for ts in tests.values() for t in ts)
        print(f"shipped verdict, bisection to {tolerance or MINI_BATCH_TOLERANCE}x ({len(seeds)} seeds): limit spread adam {spread['adam']:.2f} "
              f"sgd {spread['sgd']:.2f}; {steps:.0f} steps (median)")  # fmt: skip


def part2(curves, limits):
    shipped = (F.START_RISE, F.CLIMB_SHARE)
    limit = lambda o, s: limits(shipped, o, s)
    d, a = fit_shared(curves, limit, FIT)
    print(f"\n== 2. the shipped verdict, fitted on seeds {FIT[0]}-{FIT[15]} and {FIT[16]}-{FIT[-1]}")
    print(f"decay {d:.2f}; at 1000 steps: adam {a['adam']:.4f}, sgd momentum 0.9 {a['sgd']:.4f}")
    more = {o: best_a(curves, limit, o, MORE_SEEDS, d)[0] for o in MORE_OPTS}
    for o in MORE_OPTS:
        print(f"  {o:9s} (seeds {MORE_SEEDS[0]}-{MORE_SEEDS[-1]}): at 1000 steps {more[o]:.4f}")
    points = {0.0: more["sgd-plain"], 0.5: more["sgd-m0.5"], 0.9: a["sgd"]}
    k, c = np.polyfit(np.log([1 - m for m in points]), np.log(list(points.values())), 1)
    print(f"  sgd: {math.exp(c):.4f} * (1 - momentum) ** {k:.2f} through momentum 0, 0.5 (seeds {MORE_SEEDS[0]}-{MORE_SEEDS[-1]}) and 0.9")
    shipped_rule = (F.SUGGESTION_DECAY, {"adam": F.ADAPTIVE_RULE.fraction(1000), "sgd": F.SGD_RULE.fraction(1000, 0.9)})
    for label, rule in (("fitted here", (d, a)), ("shipped (rounded)", shipped_rule)):
        fit_r, held_r = scored(curves, limit, rule, FIT), scored(curves, limit, rule, HELDOUT)
        print(f"{label:18s} fit seeds: hits {hits(fit_r)}/{len(fit_r)}, median {statistics.median(fit_r):.3f}; "
              f"held-out {HELDOUT[0]}-{HELDOUT[-1]}: hits {hits(held_r)}/{len(held_r)}, median {statistics.median(held_r):.3f}")  # fmt: skip
    for o in MORE_OPTS:
        opt = _optimizer(o)  # the shipped rule reads family and momentum off the optimizer itself
        r = [curves.ratio((o, e, s), F.suggest_lr(limit(o, s), e * L.STEPS_PER_EPOCH, optimizer=opt)) for e in L.EPOCHS for s in MORE_SEEDS]
        print(f"shipped, {o:9s} (in-sample): hits {hits(r)}/{len(r)}, median {statistics.median(r):.3f}")


def part3(curves, limits):
    """What the suggestion misses: how far each seed's best rate sits from the others', whether that
    holds across run lengths, and whether anything the range test measures follows it."""
    print(f"\n== 3. the seed's own best rate ({len(ALL_SEEDS)} seeds): centre of the rates within 1.05x of the grid's best, "
          "less the mean over seeds at each length, averaged over the lengths")  # fmt: skip
    for o in L.OPTS:
        centres = []
        for s in ALL_SEEDS:
            row = []
            for e in L.EPOCHS:
                curves.ratio((o, e, s), 1e-3)  # fills the cache
                x, y = curves.cache[(o, e, s)]
                row.append(float(np.mean(x[y <= math.log(1.05)])))
            centres.append(row)
        shift = np.array(centres) - np.mean(centres, axis=0)
        per_seed = shift.mean(axis=1)
        features = {
            "limit (shipped verdict)": [math.log(limits((F.START_RISE, F.CLIMB_SHARE), o, s)) for s in ALL_SEEDS],
            "limit (verdict before)": [math.log(limits(VARIANTS["before (rise 1.25, climb share 0.2)"], o, s)) for s in ALL_SEEDS],
            "starting loss": [math.log(_starting_loss(s)) for s in ALL_SEEDS],
            "end loss of the top stable probe": [math.log(_top_stable_end_loss(L.rangetest(o, 10, s))) for s in ALL_SEEDS],
        }
        corr = ", ".join(f"{name} {np.corrcoef(v, per_seed)[0, 1]:+.2f}" for name, v in features.items())
        print(f"{o}: spread {math.exp(float(np.std(per_seed))):.2f}x (1 sd); correlation of the 10- and 30-epoch shifts "
              f"{np.corrcoef(shift[:, 0], shift[:, -1])[0, 1]:.2f}; correlation with {corr}")  # fmt: skip


def _starting_loss(seed: int) -> float:
    from autolr.tasks import build_task

    task = build_task(L.TASK, {}, seed=seed)
    x, y = task.train_data.tensors
    with torch.no_grad():
        return float(task.loss_fn(task.model(x), y))


def _top_stable_end_loss(test: dict) -> float:
    return max((p for p in test["probes"] if p["stable"]), key=lambda p: p["lr"])["end_loss"]


def _optimizer(name: str) -> torch.optim.Optimizer:
    opt, hparams = L.bf.OPTIMIZERS[name]
    return build_optimizer(opt, [torch.nn.Parameter(torch.zeros(1))], 1e-3, hparams)


def main():
    store = L.Store()
    curves, limits = Curves(store), Limits()
    part1(curves, limits)
    part2(curves, limits)
    part3(curves, limits)


if __name__ == "__main__":
    main()
