"""What the stability rule's second clause changes on the benchmark's studies.

A trial is stable when it finished, did not diverge and kept what it learnt (``autolr.stability``).
Before 2026-12-07 the last part was only "its training loss ended below its start"; the rule now also
counts as unstable a run that got 20% or more below its start and gave back more than half of that
progress (learnt, spiked, sat at chance). This runs ``bench/efficiency.py``'s autolr studies with the
rule as it is, and prints, per study, the trials the two rules read differently (optimizer, lr, loss
ratio at the end, lowest loss ratio), how many of the sampler's per-optimizer readings of the highest
stable rate changed, and whether the exported winner is the one stored in
``bench/oracle/efficiency_runs.jsonl`` (measured with the rule before). The same winner means the
same row: the benchmark re-trains the winner on fixed fresh seeds.

    nice -n 5 python bench/stability_rule.py [--tasks ...] [--arms fixed auto] [--seeds 5]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import optuna
from efficiency import ORACLE, TASKS, study_text

import autolr
from autolr import keys, stability


def readings(t: optuna.trial.FrozenTrial) -> tuple[bool, bool]:
    """``(the rule before, the rule now)`` of one trial."""
    state, diverged, ratio = t.state.name, bool(t.user_attrs.get(keys.DIVERGED)), t.user_attrs.get(keys.LOSS_RATIO)
    before = stability.is_stable(state, diverged=diverged, loss_ratio=ratio)
    return before, stability.is_stable(state, diverged=diverged, loss_ratio=ratio, low_loss_ratio=t.user_attrs.get(keys.LOW_LOSS_RATIO))


def changed_limits(trials: list[optuna.trial.FrozenTrial]) -> int:
    """How many (trial, optimizer) readings of the highest stable rate, over the trials before each
    trial as its sampler saw them, differ between the two rules."""
    changed = 0
    for n in range(len(trials)):
        for name in {t.params.get("optimizer") for t in trials}:
            before = [t for t in trials[:n] if t.params.get("optimizer") == name and t.params.get("lr")]
            limits = [stability.max_stable_lr((t.params["lr"], readings(t)[k]) for t in before) for k in (0, 1)]
            changed += limits[0] != limits[1]
    return changed


def one_study(task: str, arm: str, seed: int) -> tuple[list, int, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "study.yaml"
        path.write_text(study_text(task, arm, seed, 30))
        storage = f"sqlite:///{tmp}/study.db"
        result = autolr.tune(str(path), storage=storage, tracking_uri=None, progress=False)
        trials = optuna.load_study(study_name=result.study_name, storage=storage).get_trials(deepcopy=False)
    flips = [(t.number, t.params.get("optimizer"), t.params.get("lr"), t.user_attrs.get(keys.LOSS_RATIO), t.user_attrs.get(keys.LOW_LOSS_RATIO))
             for t in trials if len(set(readings(t))) == 2]  # fmt: skip
    return flips, changed_limits(trials), result.winner_params


def same(a: dict, b: dict) -> bool:
    return a["optimizer"] == b["optimizer"] and a["schedule"] == b["schedule"] and abs(a["lr"] / b["lr"] - 1) < 1e-6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--arms", nargs="+", default=["fixed", "auto"], choices=["fixed", "auto"])
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    stored = {(r["task"], r["row"], r["seed"]): r["params"] for r in map(json.loads, (ORACLE / "efficiency_runs.jsonl").read_text().splitlines())}
    studies = flipped = held = 0
    for task in args.tasks:
        for arm in args.arms:
            for seed in range(args.seeds):
                flips, changed, winner = one_study(task, arm, seed)
                before = stored.get((task, arm, seed))
                kept = before is not None and same(before, winner)
                studies, flipped, held = studies + 1, flipped + bool(flips), held + kept
                print(f"{task} {arm} seed {seed}: {len(flips)} trial(s) read otherwise {flips}, {changed} limit reading(s) changed, "
                      f"winner {'as stored' if kept else f'{winner} (stored: {before})'}", flush=True)  # fmt: skip
    print(f"{studies} studies: {flipped} with a trial the rule now reads unstable, {held} with the stored winner")


if __name__ == "__main__":
    main()
