"""What the stability rule's second clause changes on the benchmark's studies.

A trial is stable when it finished, did not diverge and kept what it learnt (``autolr.stability``).
Before 2026-12-07 the last part was only "its training loss ended below its start"; the rule now also
counts as unstable a run whose epoch means got 20% or more below its start and whose last epoch gave
back more than half of that progress (learnt, spiked, sat at chance), each epoch mean read in the
run's favour by at least two standard errors. This runs ``bench/efficiency.py``'s autolr studies with the
rule as it is, and prints, per study, the trials the two rules read differently (optimizer, lr, loss
ratio at the end, lowest and last epoch's loss ratios), how many of the sampler's per-optimizer readings of the highest
stable rate changed, and whether the exported winner is the one stored in
``bench/oracle/efficiency_runs.jsonl`` (measured with the rule before). The same winner means the
same row: the benchmark re-trains the winner on fixed fresh seeds.

    nice -n 5 python bench/stability_rule.py [--tasks ...] [--arms fixed auto] [--seeds 5] [--first-seed 0]
    python bench/stability_rule.py --simulate     # seconds: the rule on simulated noisy runs

``--simulate`` feeds simulated training losses through the trial's own report (``TrialReport``, in
windows of 4 steps as the trainer hands them over) and counts, per shape: runs that settle at 0.75x
their start under 30-80% noise a step (lognormal), read unstable by the rule now where the rule
before read them stable (false alarms); and runs that learnt to 0.2x and sat at 0.8x from half-way,
read unstable now where the rule before read them stable (the case the clause is for).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import optuna
import torch
from efficiency import ORACLE, TASKS, study_text

import autolr
from autolr import keys, stability


def readings(t: optuna.trial.FrozenTrial) -> tuple[bool, bool]:
    """``(the rule before, the rule now)`` of one trial."""
    state, diverged = t.state.name, bool(t.user_attrs.get(keys.DIVERGED))
    before = stability.is_stable(state, diverged=diverged, loss_ratio=t.user_attrs.get(keys.LOSS_RATIO))
    return before, stability.is_stable(state, diverged=diverged, **stability.ratios(t.user_attrs))


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
    flips = [(t.number, t.params.get("optimizer"), t.params.get("lr"), *stability.ratios(t.user_attrs).values())
             for t in trials if len(set(readings(t))) == 2]  # fmt: skip
    return flips, changed_limits(trials), result.winner_params


def same(a: dict | None, b: dict | None) -> bool:
    return a is not None and b is not None and a["optimizer"] == b["optimizer"] and a["schedule"] == b["schedule"] and abs(a["lr"] / b["lr"] - 1) < 1e-6


class _Attrs:
    """The part of an Optuna trial that ``TrialReport`` writes to."""

    number, user_attrs = 0, {}

    def __init__(self) -> None:
        self.attrs: dict = {}

    def set_user_attr(self, key: str, value: float) -> None:
        self.attrs[key] = value

    def report(self, value: float, step: int) -> None: ...


def simulated(losses: np.ndarray, epochs: int) -> tuple[bool, bool] | None:
    """``(the rule before, the rule now)`` of a run with these training losses in ``epochs`` epochs."""
    from autolr.tracking import NullTrialRun
    from autolr.trial import TrialReport

    trial = _Attrs()
    report = TrialReport(trial, NullTrialRun(), "val_loss", curve_pruning=False)
    step = 0
    for epoch, chunk in enumerate(np.array_split(losses, epochs), start=1):
        for first in range(0, len(chunk), 4):
            report.on_steps(step, {"train_loss": [float(v) for v in chunk[first : first + 4]]})
            step += len(chunk[first : first + 4])
        report.on_epoch_end(epoch, step, {"val_loss": 1.0})
    report.record_loss_ratio()
    if keys.LOSS_RATIO not in trial.attrs:
        return None
    return stability.is_stable("COMPLETE", diverged=False, loss_ratio=trial.attrs[keys.LOSS_RATIO]), stability.is_stable(
        "COMPLETE", diverged=False, **stability.ratios(trial.attrs)
    )


def simulate() -> None:
    rng = np.random.default_rng(0)

    def noisy(curve: np.ndarray, sigma: float) -> np.ndarray:
        return curve * np.exp(sigma * rng.standard_normal(len(curve)) - sigma**2 / 2)

    print("settling at 0.75x its start: read unstable now, stable before (false alarms)")
    alarms = runs = 0
    for epochs, per_epoch, sigma in (
        (200, 4, 0.3),
        (200, 4, 0.5),
        (60, 4, 0.5),
        (30, 5, 0.5),
        (20, 8, 0.5),
        (100, 16, 0.5),
        (50, 32, 0.5),
        (8, 100, 0.5),
        (10, 50, 0.8),
        (2, 3, 0.3),
    ):
        steps = np.arange(epochs * per_epoch)
        read = [simulated(noisy(0.75 + 0.25 * np.exp(-4 * steps / len(steps)), sigma), epochs) for _ in range(200)]
        stable_before = [now for before, now in filter(None, read) if before]
        alarms, runs = alarms + stable_before.count(False), runs + len(stable_before)
        print(f"  {epochs:>3} epochs of {per_epoch:>3} steps, noise {sigma:.0%}: {stable_before.count(False)} of {len(stable_before)}")
    print(f"  in all: {alarms} of {runs}")
    print("learnt to 0.2x, then at 0.8x from half-way: read unstable now, stable before")
    for per_epoch, sigma in ((100, 0.2), (100, 0.3), (30, 0.3), (20, 0.3), (10, 0.1), (4, 0.1)):
        steps = np.arange(8 * per_epoch)
        curve = np.where(steps < 4 * per_epoch, 0.2 + 0.8 * np.exp(-steps / per_epoch), 0.8)
        read = [simulated(noisy(curve, sigma), 8) for _ in range(200)]
        stable_before = [now for before, now in filter(None, read) if before]
        share = stable_before.count(False) / max(len(stable_before), 1)
        print(f"  8 epochs of {per_epoch:>3} steps, noise {sigma:.0%}: {stable_before.count(False)} of {len(stable_before)} ({share:.0%})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--arms", nargs="+", default=["fixed", "auto"], choices=["fixed", "auto"])
    ap.add_argument("--seeds", type=int, default=5, help="study seeds first-seed .. first-seed + seeds - 1")
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--simulate", action="store_true", help="the rule on simulated noisy runs; no study")
    args = ap.parse_args()
    if args.simulate:
        simulate()
        return
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(1)  # as bench/efficiency.py measured the stored winners: another thread count sums in another order
    stored = {(r["task"], r["row"], r["seed"]): r["params"] for r in map(json.loads, (ORACLE / "efficiency_runs.jsonl").read_text().splitlines())}
    studies = flipped = held = 0
    for task in args.tasks:
        for arm in args.arms:
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                flips, changed, winner = one_study(task, arm, seed)
                before = stored.get((task, arm, seed))
                kept = same(before, winner)
                studies, flipped, held = studies + 1, flipped + bool(flips), held + kept
                print(f"{task} {arm} seed {seed}: {len(flips)} trial(s) read otherwise {flips}, {changed} limit reading(s) changed, "
                      f"winner {'as stored' if kept else f'{winner} (stored: {before})'}", flush=True)  # fmt: skip
    print(f"{studies} studies: {flipped} with a trial the rule now reads unstable, {held} with the stored winner")


if __name__ == "__main__":
    main()
