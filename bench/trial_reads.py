"""What reading stored trials back costs: Optuna's ORM against autolr's plain statements
(:mod:`autolr.fast_read`), side by side on one storage.

A study of ``TRIALS`` trials as a quickstart leaves them (five params, user attrs, 8 reports each,
most complete, some pruned), on the storages autolr opens (SQLite as ``autolr tune`` sets it up;
PostgreSQL when it answers). Three reads, each timed ``REPEATS`` times, the two ways alternated in
rounds so drift on a shared machine hits both alike:

- ``get_trial``: one trial (what ``Study.tell`` reads before and after storing a trial's state);
- ``refresh``: one new trial (what ``Study.ask``'s cache refresh reads between two trials);
- ``study``: every trial (a study loaded afresh).

Printed per storage and read: milliseconds per read, optuna / autolr, the ratio (median of rounds).

    python bench/trial_reads.py [--trials 24] [--rounds 5] [--postgres URL | --no-postgres]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
import warnings

import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from autolr import store

REPEATS = 200
POSTGRES_URL = os.environ.get("AUTOLR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def _study(storage, trials: int) -> optuna.Study:
    study = optuna.create_study(storage=storage, study_name=f"reads-{uuid.uuid4().hex[:8]}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        for i in range(trials):
            trial = study.ask()
            trial.suggest_float("lr", 1e-4, 3.0, log=True)
            trial.suggest_categorical("optimizer", ["sgd", "adam"])
            trial.suggest_categorical("schedule", ["constant", "cosine", "step", "one_cycle"])
            trial.suggest_float("warmup", 0.0, 0.2)
            trial.suggest_float("momentum", 0.8, 0.99)
            trial.set_user_attr("autolr.params", dict(trial.params))
            trial.set_user_attr("autolr.steps", 176)
            for epoch in range(8):
                trial.report(1.0 / (epoch + 1), epoch)
            study.tell(trial, 0.1 + i / 100 if i % 3 else None, state=None if i % 3 else TrialState.PRUNED)
    return study


def _ms(read) -> float:
    start = time.perf_counter()
    for _ in range(REPEATS):
        read()
    return (time.perf_counter() - start) / REPEATS * 1000


def bench(url: str, trials: int, rounds: int) -> None:
    storage = store._open_storage(url)
    study = _study(storage, trials)
    ids = [t._trial_id for t in RDBStorage._get_trials(storage, study._study_id, None, set(), -1)]
    sid, last = study._study_id, ids[-1]
    reads = {
        "get_trial": (lambda: RDBStorage.get_trial(storage, last), lambda: storage.get_trial(last)),
        "refresh": (lambda: RDBStorage._get_trials(storage, sid, None, {last}, last - 1), lambda: storage._get_trials(sid, None, {last}, last - 1)),
        "study": (lambda: RDBStorage._get_trials(storage, sid, None, set(), -1), lambda: storage._get_trials(sid, None, set(), -1)),
    }
    assert storage._reader(), "the fast reads are off (another Optuna version?)"
    for name, (theirs, ours) in reads.items():
        assert theirs() == ours(), name
        ratios, times = [], []
        for _ in range(rounds):
            t_optuna, t_autolr = _ms(theirs), _ms(ours)
            ratios.append(t_optuna / t_autolr)
            times.append((t_optuna, t_autolr))
        print(f"{url.split(':')[0]:10s} {name:9s} optuna {statistics.median(t for t, _ in times):6.3f} ms, autolr "
              f"{statistics.median(t for _, t in times):6.3f} ms: {statistics.median(ratios):5.1f}x "
              f"(rounds {min(ratios):.1f}x-{max(ratios):.1f}x)", flush=True)  # fmt: skip
    if not url.startswith("sqlite"):
        optuna.delete_study(study_name=study.study_name, storage=url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--postgres", default=POSTGRES_URL)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="autolr-reads-") as tmp:
        bench(f"sqlite:///{tmp}/reads.db", args.trials, args.rounds)
    if not args.no_postgres:
        try:
            bench(args.postgres, args.trials, args.rounds)
        except Exception as exc:  # noqa: BLE001 - no server here: SQLite alone
            print(f"postgresql: not measured ({type(exc).__name__}: {exc})")


if __name__ == "__main__":
    main()
