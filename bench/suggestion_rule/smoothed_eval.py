"""Less noisy held-out comparison of fraction rules: for each case, the share of the real sweep runs
(fractions 12 per decade) within +-1 sweep step (x/÷ 1.21) of the rule's fraction that are within
1.05x of the grid's best, summed over cases ("expected hits"), and the median over cases of the
interpolated ratio.  Needs compute.py and fit.py (reads /tmp/digits_study/fit.json).

    python bench/suggestion_rule/smoothed_eval.py
"""
import json
import statistics

import numpy as np

import study_lib as L
from compute import FRACTIONS, HELDOUT, TRAIN
from fit import CURRENT, Cases, fraction, interp_ratio

LOGF = np.log(FRACTIONS)


def expected(cases, frac_of):
    hits, meds = 0.0, []
    for c in cases:
        f = frac_of(c)
        k = int(np.argmin(np.abs(LOGF - np.log(f))))
        window = c["logr"][max(k - 1, 0): k + 2]
        hits += float(np.mean(np.exp(window) <= 1.05))
        meds.append(interp_ratio(c, f))
    return hits, statistics.median(meds)


store = L.Store()
fit = json.load(open(L.CACHE / "fit.json"))
rules = {"current": CURRENT, **{k: {o: tuple(v) for o, v in r.items()} for k, r in fit["rules"].items() if not k.startswith("current")}}
for label, seeds in (("train 0-15", TRAIN), ("held-out 100-107", HELDOUT)):
    cases = Cases(store, seeds).items
    for name, rule in rules.items():
        h, m = expected(cases, lambda c: fraction(*rule[c["opt"]], c["epochs"]))
        print(f"{label:17s} {name:28s}: expected hits {h:5.1f}/{len(cases)}, median (interp.) {m:.3f}")
