"""Winners that hold, at equal compute: each tuner's exported winner re-trained on fresh seeds, against
a dense-grid oracle (``bench/oracle/``, made by ``bench/oracle/make_oracle.py``).

Tasks: ``digits`` (the built-in digits MLP, 20 epochs, batch 64, sgd(momentum 0.9)/adam x
constant/cosine/step/exponential, lr in [1e-5, 1]), ``digits_deep`` (a digits-like task no default
was chosen on: the digits MLP at depth 2, width 64, 10 epochs, batch 32, the same space; added after
the defaults were set, as a held-out check), ``digits_wide`` (a second held-out one, added with the
confirmation's step back: width 256, one hidden layer, 15 epochs, batch 128, 11 steps an epoch; a
narrow best region, Adam constant near 0.003), ``breast_cancer`` (the same space on the built-in
breast-cancer MLP) and ``lsq`` (least squares, condition 100, 60 full-batch SGD steps, lr in
[1e-4, 100], constant/cosine; its oracle is the exact optimum). Per task and study seed, every arm
gets the same trial budget (30 trials) on the same space:

- ``autolr fixed``: ``autolr.tune`` with the fixed bounds, defaults otherwise (TPE under the
  divergence ceiling, median pruning, confirmation); its export rebuilt with ``autolr.load_best``;
- ``autolr fixed, single seed``: the same study's best single-seed trial (what confirmation off exports);
- ``autolr lr: auto`` (and its single-seed best): bounds from the LR range test;
- ``autolr seed per trial`` (and its single-seed best): ``train.seed_per_trial: true``;
- ``random search``: a plain Optuna script, ``RandomSampler``, the plain loop below;
- ``TPE + MedianPruner``: a plain Optuna script (a diverged trial returns inf; val_loss reported per
  epoch to the pruner);
- ``schedulefree_adamw`` (constant schedule) and ``prodigy`` (the task's schedules): autolr studies
  with the LR-free optimizer alone.
(TPE + guard without the ceiling: not measured; main has no study-file switch for the ceiling yet.)

Every winner is re-trained in a plain PyTorch loop (``bench/oracle/make_oracle.py:plain_train``:
seeded model, shuffled batches, ``optimizer.step(); scheduler.step()``) on 3 fresh seeds
(500001-500003: no study, search-trial or confirmation seed; the grid's own seeds); the figure is
their mean final val_loss / the oracle's on the same seeds: the cell a dense grid search picks (best
on the grid's own seeds; 1.00: as good as the grid's pick, below 1: better), beside hindsight (/ the
grid's best cell on the fresh seeds themselves: chosen on the seeds it is scored on). The headline
is autolr's exported winner, fixed bounds and ``lr: auto``, on the tasks with a grid. Compute is training steps (range tests and confirmation runs included), as a
share of the grid's. Results append to a JSON-lines file as they come (``--out``; a rerun skips what
it holds), so a stopped run loses nothing.

    nice -n 5 python bench/efficiency.py [--seeds 5] [--tasks digits digits_deep digits_wide breast_cancer lsq] [--arms ...] [--trials 30]
    python bench/efficiency.py --report --seeds 10 --out bench/oracle/efficiency_runs.jsonl bench/oracle/efficiency_plans.jsonl

The stored runs hold study seeds 0-9 for autolr (fixed, ``lr: auto``), random search and TPE on every
task, 0-4 for the other arms (the ``searches`` column of the report says how many a row holds). Rows
``ARM@NAME`` are earlier defaults and variants, kept to compare: ``@race-v1`` the confirmation before
2026-12-07 (an early drop against the search value, near-duplicates raced, no step back; pruning
from epoch 1), ``@no-drop`` no early drop and the step back (pruning from epoch 1), ``@warmup20pct``
that with pruning from a fifth of the epochs (the default since), ``--variant`` rows of pruning
settings measured with ``@race-v1``'s confirmation, and from 2026-12-07: ``@stepback1`` a single
step back (before the chain of step backs), ``@top1`` (``--variant top1 'confirm: {top: 1}'``),
and code changes, their rows renamed by hand: ``@no-sweep`` (the defaults before the schedule sweep
of ``autolr/sweep.py``), ``@sweep90`` (its first try, enqueued as trial 27 of 30 started, so one
swept schedule never ran), and, measured and not shipped, ``@sweep60`` (the sweep at 60% of the
trials), ``@tpe-gamma25`` (TPE's ``gamma`` a quarter of the trials), ``@sweep-unpruned`` (the sweep's
trials exempt from curve pruning), ``@sweep-mean`` (the sweep at
the incumbent's mean rate, each schedule's peak scaled by its mean factor; a code change, measured and not kept)
and ``@reeval5`` (a new best search trial trained again on a second seed, its value the mean of the
two: ``git apply bench/variants/reeval5.patch``, run with ``AUTOLR_REEVAL=5`` and ``--variant reeval5 '{}'``),
and, measured against a rerun of the defaults that replaced the stored default rows on 2026-12-07 (it
flipped 3 of the 100 studies: the runs are not bit-identical, and some decisions are that close):
``@region`` (the race passes over a trial within 0.1 decades of a better one of its optimizer, any
schedule: ``git apply bench/variants/region.patch``, run with ``AUTOLR_REGION=0.1`` and ``--variant
region '{}'``), ``@stepgain`` (a further step back after any gain: ``bench/variants/stepgain.patch``,
``AUTOLR_STEPGAIN=1``, ``--variant stepgain '{}'``) and ``@seeds2``
(``--variant seeds2 'confirm: {seeds: 2}'``), and ``@jointlr`` (``lr: auto`` only: TPE's grouped space
holds the rate over every optimizer's range: ``git apply bench/variants/jointlr-tpe.patch``, then
``--arms auto --variant jointlr '{}'``) and ``@gp`` (``--variant gp 'sampler: gp'``; its ``lr: auto`` rows with a first version of
``JointLrGPSampler`` that clipped out-of-range proposals) and ``@gp2`` (``lr: auto`` again, as shipped),
and ``@spt`` (a seed per search trial on every task and study seed: ``--arms fixed`` and ``--arms auto``,
each with ``--variant spt 'train: {seed_per_trial: true}'``) and ``@warmup3`` (curve pruning from a third
of the epochs: ``git apply bench/variants/warmup3.patch``, run with ``AUTOLR_WARMUP_DIV=3`` and ``--variant warmup3 '{}'``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml

import autolr
from autolr import keys
from autolr.confirm import candidates
from autolr.hparams import RunConfig
from autolr.seeds import fresh_seed

sys.path.insert(0, str(Path(__file__).resolve().parent / "oracle"))
from make_oracle import EVAL_SEEDS, TASKS, plain_train, run_config, steps_per_run  # noqa: E402

ORACLE = Path(__file__).resolve().parent / "oracle"
FRESH_SEEDS = EVAL_SEEDS  # the grid's seeds too: the figure compares like with like
AUTOLR_ARMS = ("fixed", "auto", "seed-per-trial", "schedulefree", "prodigy")
PLAIN_ARMS = ("random", "tpe-median")
PLAN_ARMS = ("plans", "plans-spt")  # confirmation plans replayed on one search (one seed, or a seed per trial)
ARMS = AUTOLR_ARMS + PLAIN_ARMS + PLAN_ARMS
# (configurations, fresh seeds each): (1, 0) exports the single-seed best; (2, 3) was the default for 30 trials
# before the race (autolr.confirm._race: up to 7 runs, 3 seeds a configuration), which these replays do not cover
PLANS = ((1, 0), (1, 1), (1, 3), (2, 3), (3, 2), (7, 1), (4, 3))
LABELS = {
    "fixed": "autolr fixed",
    "fixed/single": "autolr fixed, single seed",
    "auto": "autolr lr: auto",
    "auto/single": "autolr lr: auto, single seed",
    "seed-per-trial": "autolr seed per trial",
    "seed-per-trial/single": "autolr seed per trial, single seed",
    "random": "random search",
    "tpe-median": "TPE + MedianPruner",
    "schedulefree": "schedulefree_adamw",
    "prodigy": "prodigy",
}
LABELS["plans/race"] = "replay: race (without the step back)"
LABELS["plans-spt/race"] = "replay, seed per trial: race"
for _t, _k in PLANS:
    LABELS[f"plans/{_t}x{_k}"] = f"replay: top {_t} x {_k} seeds" if _k else "replay: single-seed best"
    LABELS[f"plans-spt/{_t}x{_k}"] = f"replay, seed per trial: top {_t} x {_k}" if _k else "replay, seed per trial: single-seed best"


def study_text(task: str, arm: str, seed: int, trials: int) -> str:
    spec = TASKS[task]
    space = dict(spec["space"])
    if arm == "schedulefree":
        space = {"optimizer": {"schedulefree_adamw": {}}, "schedule": {"constant": {}}}
    elif arm == "prodigy":
        space = {"optimizer": {"prodigy": {}}, "schedule": space["schedule"]}
    train = {"epochs": spec["epochs"], "batch_size": spec["batch_size"]}
    if arm == "seed-per-trial":
        train["seed_per_trial"] = True
    doc = {
        "name": f"eff-{task}-{arm}-{seed}",
        "task": spec["task"],
        "task_args": spec["task_args"],
        "train": train,
        "trials": trials,
        "seed": seed,
        "search": {"lr": "auto" if arm == "auto" else {"low": spec["lr"][0], "high": spec["lr"][1]}, **space},
    }
    return yaml.safe_dump(doc, sort_keys=False)


def _steps(trials: list[optuna.trial.FrozenTrial]) -> int:
    return sum(int(t.user_attrs.get(keys.STEPS, 0)) for t in trials)


def autolr_arm(task: str, arm: str, seed: int, trials: int, folder: Path, extra: str = "") -> dict[str, tuple[Any, int]]:
    """{row: (what rebuilds the winner, compute in steps)}: the export, and the single-seed best;
    ``extra``: YAML merged into the study file (``--variant``)."""
    path = folder / f"{task}-{arm}-{seed}.yaml"
    path.write_text(_merged(study_text(task, arm, seed, trials), extra))
    storage = f"sqlite:///{folder}/{task}-{arm}-{seed}.db"
    result = autolr.tune(str(path), storage=storage, tracking_uri=None, progress=False)
    study = optuna.load_study(study_name=result.study_name, storage=storage)
    search = _steps(study.get_trials(deepcopy=False))
    finder = sum(int(v["result"].get("steps", 0)) for k, v in study.user_attrs.items() if k.startswith("autolr.range_test."))
    confirm = optuna.load_study(study_name=f"{result.study_name}.confirm", storage=storage)
    out = folder / f"{task}-{arm}-{seed}.best.yaml"
    autolr.export_best(str(path), storage=storage, path=out)
    rows = {arm: (autolr.load_best(out), search + finder + _steps(confirm.get_trials(deepcopy=False)))}
    if arm in ("fixed", "auto", "seed-per-trial"):
        rows[f"{arm}/single"] = (RunConfig.from_flat(result.best_params), search + finder)
    return rows


def _merged(text: str, extra: str) -> str:
    """The study file ``text`` with the YAML mapping ``extra`` merged in, key by key at every depth."""

    def merge(base: Any, over: Any) -> Any:
        if isinstance(base, dict) and isinstance(over, dict):
            return {**base, **{k: merge(base.get(k), v) for k, v in over.items()}}
        return over

    return yaml.safe_dump(merge(yaml.safe_load(text), yaml.safe_load(extra) or {}), sort_keys=False)


def plain_arm(task: str, arm: str, seed: int, trials: int) -> dict[str, tuple[Any, int]]:
    """What a user writes: an Optuna study over the same space, the plain loop on the study's seed."""
    spec, steps = TASKS[task], [0]
    per_epoch = steps_per_run(spec) // spec["epochs"]

    def objective(trial: optuna.Trial) -> float:
        opt = trial.suggest_categorical("optimizer", list(spec["space"]["optimizer"]))
        lr = trial.suggest_float("lr", *spec["lr"], log=True)
        sched = trial.suggest_categorical("schedule", list(spec["space"]["schedule"]))

        def report(epoch: int, val: float) -> None:
            seen[0] = epoch
            trial.report(val, epoch)
            if arm == "tpe-median" and trial.should_prune():
                raise optuna.TrialPruned()

        seen = [0]
        try:
            value, n = plain_train(spec, run_config(opt, lr, sched, spec["space"]), seed, on_epoch=report)
        except optuna.TrialPruned:
            steps[0] += seen[0] * per_epoch
            raise
        steps[0] += n
        return value  # inf when it diverged: ranked last, never NaN

    if arm == "random":
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed), pruner=optuna.pruners.NopPruner())
    else:
        study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed), pruner=optuna.pruners.MedianPruner())
    study.optimize(objective, n_trials=trials)
    best = study.best_trial.params
    return {arm: (run_config(best["optimizer"], best["lr"], best["schedule"], spec["space"]), steps[0])}


def plans_arm(task: str, arm: str, seed: int, trials: int, folder: Path) -> dict[str, tuple[Any, int]]:
    """One autolr search (fixed bounds, confirmation off), its top configurations trained on the
    confirmation's seeds in the plain loop, and every plan of PLANS replayed on those values: which
    configuration each would export, and at what compute (the search plus top x seeds runs)."""
    base = "seed-per-trial" if arm == "plans-spt" else "fixed"
    path = folder / f"{task}-{arm}-{seed}.yaml"
    path.write_text(study_text(task, base, seed, trials).replace(f"eff-{task}-{base}-", f"eff-{task}-{arm}-") + "confirm: false\n")
    storage = f"sqlite:///{folder}/{task}-{arm}-{seed}.db"
    result = autolr.tune(str(path), storage=storage, tracking_uri=None, progress=False)
    study = optuna.load_study(study_name=result.study_name, storage=storage)
    search, per_run = _steps(study.get_trials(deepcopy=False)), steps_per_run(TASKS[task])
    picked = [RunConfig.from_flat(t.user_attrs[keys.PARAMS]) for t in candidates(study, max(t for t, _ in PLANS))]
    seeds = [fresh_seed(seed, k) for k in range(1, max(k for _, k in PLANS) + 1)]  # the confirmation's own seeds
    values = [[plain_train(TASKS[task], c, s)[0] for s in seeds] for c in picked]
    rows = {}
    for top, k in PLANS:
        mean = [statistics.fmean(v[:k]) if k and all(math.isfinite(x) for x in v[:k]) else (0.0 if not k else math.inf) for v in values[:top]]
        rows[f"{arm}/{top}x{k}"] = (picked[min(range(len(mean)), key=mean.__getitem__)], search + top * k * per_run)
    winner, runs = _race_replay(candidates(study, len(picked)), values, seeds[:3], budget=max(1, trials // 4))
    rows[f"{arm}/race"] = (picked[winner], search + runs * per_run)
    return rows


def _race_replay(searched: list[optuna.trial.FrozenTrial], values: list[list[float]], seeds: list[int], budget: int) -> tuple[int, int]:
    """autolr's default confirmation (``autolr.confirm._race``) replayed on the plain loop's values:
    run by run as ``run_confirmation`` asks for them; (index of the exported candidate, runs used)."""
    from autolr.confirm import _walk, confirmed_winner

    runs: list[optuna.trial.FrozenTrial] = []
    while True:
        done, following = _walk(searched, runs, seeds, budget, "minimize")
        if following is None:
            break
        trial, seed, _ = following  # no step back here (step_back None): each value is the candidate's own
        value = values[searched.index(trial)][seeds.index(seed)]
        attrs = {keys.CONFIRM_OF: trial.number, keys.SEED: seed}
        run = (
            optuna.trial.create_trial(value=value, user_attrs=attrs)
            if math.isfinite(value)
            else optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, user_attrs=attrs)
        )
        run.number = len(runs)
        runs.append(run)
    winner = confirmed_winner(done, "minimize")
    number = winner.trial if winner is not None else searched[0].number  # every candidate dropped: the export's single-seed best
    return [t.number for t in searched].index(number), len(runs)


_FRESH: dict[tuple[str, str], float] = {}  # one configuration's fresh-seed value, trained once


def fresh(task: str, build: Any) -> float:
    key = (task, json.dumps(build.params if hasattr(build, "params") else build.flat(), sort_keys=True, default=str))
    if key not in _FRESH:
        values = [plain_train(TASKS[task], build, s)[0] for s in FRESH_SEEDS]
        _FRESH[key] = statistics.fmean(values) if all(math.isfinite(v) for v in values) else math.inf
    return _FRESH[key]


def oracle(task: str) -> dict[str, Any]:
    path = ORACLE / f"{task}.json"
    if not path.exists():
        sys.exit(f"{path}: no oracle yet; run: nice -n 5 python bench/oracle/make_oracle.py --tasks {task}")
    return json.loads(path.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5, help="study seeds 0..N-1")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--out", type=Path, nargs="+", default=[ORACLE / "efficiency_runs.jsonl"], help="appends to the first; reads them all")
    ap.add_argument("--report", action="store_true", help="print the table of what the files hold; train nothing")
    ap.add_argument(
        "--variant", nargs=2, metavar=("NAME", "YAML"), help="merge YAML into each autolr arm's study file (e.g. 'pruning: {curve: none}'); rows ARM@NAME"
    )
    args = ap.parse_args()
    if args.variant and not args.report and set(args.arms) - set(AUTOLR_ARMS):
        ap.error(f"--variant: only autolr's arms ({', '.join(AUTOLR_ARMS)}) read a study file, got --arms {' '.join(args.arms)}")
    suffix, extra = (f"@{args.variant[0]}", args.variant[1]) if args.variant else ("", "")
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    done = [json.loads(line) for out in args.out if out.exists() for line in out.read_text().splitlines()]
    have = {(r["task"], r["arm"], r["seed"], r["trials"]) for r in done}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):  # every task's seed 0 before anyone's seed 1: a stopped run covers every task
            for task in args.tasks:
                ref = oracle(task)
                for arm in args.arms:
                    if args.report or (task, arm + suffix, seed, args.trials) in have:
                        continue
                    t0 = time.perf_counter()
                    if arm in AUTOLR_ARMS:
                        rows = autolr_arm(task, arm, seed, args.trials, Path(tmp), extra)
                    else:
                        rows = plans_arm(task, arm, seed, args.trials, Path(tmp)) if arm in PLAN_ARMS else plain_arm(task, arm, seed, args.trials)
                    for row, (build, steps) in rows.items():
                        value = fresh(task, build)
                        rec = {"task": task, "arm": arm + suffix, "row": row + suffix, "seed": seed, "trials": args.trials, "fresh": value,
                               "ratio": value / ref["best"]["mean"], "steps": steps, "params": _params(build)}  # fmt: skip
                        done.append(rec)
                        with args.out[0].open("a") as f:
                            f.write(json.dumps(rec) + "\n")
                    figures = ", ".join(f"{r['row']} {r['ratio']:.3f}x" for r in done[-len(rows) :])
                    print(f"{task} seed {seed} {arm}: {figures} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    report([r for r in done if r["task"] in args.tasks and r["seed"] < args.seeds and r["trials"] == args.trials], args)


def _params(build: Any) -> dict[str, Any]:
    flat = build.params if hasattr(build, "params") else build.flat()
    return {k: flat[k] for k in ("optimizer", "lr", "schedule")}


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    for r in rows:  # against the oracle as it is now (the runs keep their fresh-seed value)
        ref = oracle(r["task"])
        r["ratio"], r["hindsight"] = r["fresh"] / ref["pick"]["mean"], r["fresh"] / ref["best"]["mean"]
    print(
        f"{args.trials} trials; study seeds 0-{args.seeds - 1} (searches: how many a row holds); each winner's mean final val_loss on fresh seeds {FRESH_SEEDS}, divided by"
    )
    print("the oracle's on the same seeds: the dense grid's pick (best cell on the grid's own seeds; least squares: the exact optimum);")
    print("hindsight: divided by the grid's best cell on the fresh seeds themselves. compute: training steps / the grid's")
    print(f"{'task':<14} {'arm':<42} {'searches':>8} {'median':>8} {'worst':>8} {'hindsight median':>17} {'worst':>8} {'compute':>8}")
    headline: list[float] = []
    shares: list[float] = []
    for task in args.tasks:
        ref = oracle(task)
        grid = ref.get("compute_steps")
        variants = sorted({r["row"] for r in rows if "@" in r["row"]})
        for row in [x for base in LABELS for x in (base, *(v for v in variants if v.split("@")[0] == base))]:
            mine = [r for r in rows if r["task"] == task and r["row"] == row]
            if not mine:
                continue
            base, _, variant = row.partition("@")
            label = f"{LABELS[base]} [{variant}]" if variant else LABELS[base]
            ratios, hind = [r["ratio"] for r in mine], [r["hindsight"] for r in mine]
            share = statistics.fmean(r["steps"] for r in mine) / grid if grid else None
            print(
                f"{task:<14} {label:<42} {len(mine):>8} {statistics.median(ratios):>7.3f}x {max(ratios):>7.3f}x {statistics.median(hind):>16.3f}x {max(hind):>7.3f}x"
                f" {'-' if share is None else f'{share:.1%}':>8}"
            )
        if grid:  # the headline: autolr's exported winner, fixed bounds and lr: auto, on the tasks with a grid
            mine = [r for r in rows if r["task"] == task and r["row"] in ("fixed", "auto")]
            headline += [r["ratio"] for r in mine]
            shares += [r["steps"] / grid for r in mine]
    if headline:
        print(
            f"autolr vs oracle: median {statistics.median(headline):.2f}x, worst {max(headline):.2f}x at {100 * statistics.fmean(shares):.0f}% of grid compute"
        )


if __name__ == "__main__":
    main()
