"""What Optuna's per-epoch calls cost a trial: ``trial.report`` and ``trial.should_prune`` with the
median pruner, Optuna's own against autolr's, side by side.

- optuna: Optuna's ``RDBStorage.set_trial_intermediate_value`` and its ``MedianPruner``;
- autolr: the one-statement report (:mod:`autolr.fast_report`) and the median pruner reading the
  complete trials once per trial (:class:`~autolr.pruning.CompletedSnapshot`).

A study of ``TRIALS`` trials of ``EPOCHS`` epochs each, on the storages autolr opens (SQLite as
``autolr tune`` sets it up: WAL, checkpointed after each trial; PostgreSQL when it answers). Each
epoch reports a made-up curve and asks whether to prune; no training, so only the storage work is
timed. The two pruners alternate trial by trial in two studies, so drift on a shared machine hits
both alike. Printed per storage: each call's milliseconds per trial (all its epochs; the median over
trials), optuna / autolr, and their ratio.

    python bench/optuna_calls.py [--trials 40] [--postgres URL | --no-postgres]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import optuna

from autolr import store
from autolr.pruning import CompletedSnapshot

TRIALS = 40
EPOCHS = 20
POSTGRES_URL = os.environ.get("AUTOLR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def _study(kind: str, url: str) -> optuna.Study:
    storage = store._open_storage(url)  # as autolr opens it (WAL, checkpoints, retries)
    storage.fast_report = kind == "autolr"
    median = optuna.pruners.MedianPruner(n_startup_trials=5)
    pruner = CompletedSnapshot(median) if kind == "autolr" else median
    return optuna.create_study(storage=storage, study_name=f"calls-{kind}-{uuid.uuid4().hex[:8]}", pruner=pruner)


def measure(url: str, trials: int) -> dict[str, dict[str, list[float]]]:
    studies = {kind: _study(kind, url) for kind in ("optuna", "autolr")}
    times = {kind: {"report": [], "should_prune": []} for kind in studies}
    try:
        for number in range(trials):
            for kind, study in studies.items():
                trial = study.ask()
                spent = {"report": 0.0, "should_prune": 0.0}
                for epoch in range(1, EPOCHS + 1):
                    start = time.perf_counter()
                    trial.report(1.0 / epoch + 0.01 * (number % 7), epoch)
                    middle = time.perf_counter()
                    trial.should_prune()  # the decision is not acted on: every trial reports every epoch
                    end = time.perf_counter()
                    spent["report"] += middle - start
                    spent["should_prune"] += end - middle
                for call, seconds in spent.items():
                    times[kind][call].append(seconds)
                study.tell(trial, 1.0 / EPOCHS)
    finally:
        if not url.startswith("sqlite"):
            for study in studies.values():
                optuna.delete_study(study_name=study.study_name, storage=url)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=TRIALS)
    parser.add_argument("--postgres", default=POSTGRES_URL)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", message="Heartbeat of storage")
    urls = {"sqlite": f"sqlite:///{Path(tempfile.mkdtemp(prefix='autolr-calls-')) / 'calls.db'}"}
    if not args.no_postgres:
        urls["postgresql"] = args.postgres
    print(f"{args.trials} trials x {EPOCHS} epochs, median pruner (5 startup trials); ms per trial (median over trials)")
    for label, url in urls.items():
        try:
            times = measure(url, args.trials)
        except Exception as exc:  # noqa: BLE001 - a storage that does not answer only skips its line
            print(f"{label}: skipped ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
            continue
        ms = {kind: {call: statistics.median(v) * 1000 for call, v in calls.items()} for kind, calls in times.items()}
        said = [
            f"{call} {ms['optuna'][call]:.1f} / {ms['autolr'][call]:.1f} ms ({ms['optuna'][call] / ms['autolr'][call]:.1f}x)"
            for call in ("report", "should_prune")
        ]
        print(f"{label:<11} optuna / autolr, per trial: {'; '.join(said)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
