"""What the study loop reads and writes between two trials: the claim's count, the told trial handed
back without a second read, and the WAL checkpoint off the trial's path."""

from __future__ import annotations

import gc
import shutil
import threading
import time
import warnings

import optuna
import pytest
from optuna.trial import TrialState

from autolr import sqlite, store
from autolr.claim import ask_owned, n_claimed
from autolr.driver import run_one


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/reads.db"
    return request.getfixturevalue("postgres_url")


def _study(url: str, name: str) -> optuna.Study:
    return optuna.create_study(storage=store._open_storage(url), study_name=name)


def _ask(study: optuna.Study) -> optuna.Trial:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        return study.ask()


def test_the_database_count_is_optunas_count_in_every_state(url, unique_name) -> None:
    study = _study(url, unique_name)
    for state, n in ((TrialState.COMPLETE, 3), (TrialState.PRUNED, 2), (TrialState.FAIL, 1)):
        for _ in range(n):
            study.tell(_ask(study), 1.0 if state == TrialState.COMPLETE else None, state=state)
    study.enqueue_trial({"x": 1.0})
    counts = store.count_by_state(study)
    assert counts == {s: len(study.get_trials(states=(s,))) for s in TrialState if study.get_trials(states=(s,))}
    assert counts == {TrialState.COMPLETE: 3, TrialState.PRUNED: 2, TrialState.FAIL: 1, TrialState.WAITING: 1}
    assert store.n_finished(study) == 5
    assert n_claimed(study, target=10) == 5  # nothing runs: the count alone

    running = ask_owned(study)  # this process's: alive, so claimed
    assert store.count_by_state(study)[TrialState.RUNNING] == 1
    assert n_claimed(study, target=10) == 6
    study.tell(running, 2.0)
    assert n_claimed(study, target=10) == 6
    if url.startswith("postgresql"):
        optuna.delete_study(study_name=unique_name, storage=url)


def test_storages_that_cannot_count_are_read_as_before() -> None:
    study = optuna.create_study()  # in memory
    study.tell(_ask(study), 1.0)
    assert store.count_by_state(study) is None
    assert store.n_finished(study) == 1
    assert n_claimed(study, target=3) == 1


def test_the_driver_hands_back_the_trial_as_told_without_reading_it_again(tmp_path) -> None:
    study = _study(f"sqlite:///{tmp_path}/told.db", "told")

    def complete(trial: optuna.Trial) -> float:
        trial.suggest_float("x", 0.0, 1.0)
        trial.set_user_attr("note", "kept")
        store.tell(trial, 0.5)
        return 0.5

    reads = []
    backend = study._storage._backend
    get_trial = backend.get_trial
    backend.get_trial = lambda trial_id: reads.append(trial_id) or get_trial(trial_id)
    trial = ask_owned(study)
    reads.clear()
    last = run_one(study, trial, complete)
    told_reads = len(reads)
    assert store.told(trial) is None, "run_one took the told trial: nothing is left behind"
    assert last.state == TrialState.COMPLETE and last.value == 0.5 and last.user_attrs["note"] == "kept"
    assert last.datetime_complete == study.trials[0].datetime_complete  # the stored trial, not a local copy

    def broken(trial: optuna.Trial) -> float:
        raise ValueError("boom")

    trial = ask_owned(study)
    failed = run_one(study, trial, broken)
    assert failed.state == TrialState.FAIL

    trial = ask_owned(study)
    reads.clear()
    study.tell(trial, 1.0)
    assert told_reads == len(reads), "the driver read the told trial again (once, a tell is all it takes)"


def test_a_finished_trial_reaches_the_db_file_alone_without_waiting_in_the_trial(tmp_path) -> None:
    db = tmp_path / "alone.db"
    study = _study(f"sqlite:///{db}", "alone")
    storage = study._storage._backend
    study.tell(_ask(study), 1.0)
    deadline = time.monotonic() + 10
    while True:  # the checkpoint runs in its own thread, right after the trial is told
        copy = tmp_path / f"copy-{time.monotonic_ns()}.db"
        shutil.copy(db, copy)  # the .db alone, as a backup takes it
        try:
            states = [t.state for t in optuna.load_study(study_name="alone", storage=f"sqlite:///{copy}").trials]
        except Exception:  # noqa: BLE001 - copied before the study reached the file, or in the middle of the checkpoint
            states = None
        if states == [TrialState.COMPLETE]:
            break
        assert time.monotonic() < deadline, "the .db file alone never held the finished trial"
        time.sleep(0.05)
    assert storage._checkpoint is not None and storage._checkpoint._thread.daemon


def test_a_dropped_storage_leaves_no_checkpoint_thread_or_open_file(tmp_path, monkeypatch) -> None:
    """A notebook or a test runs study after study: each storage's checkpoint thread ends with it."""
    monkeypatch.setattr(sqlite.BackgroundCheckpoint, "IDLE_S", 0.05)
    for i in range(3):
        study = _study(f"sqlite:///{tmp_path}/dropped-{i}.db", "dropped")
        study.tell(_ask(study), 1.0)
        thread = study._storage._backend._checkpoint._thread
        assert thread.is_alive()
        del study
        deadline = time.monotonic() + 60  # CI's loaded workers once took over 10 s
        while thread.is_alive() or (tmp_path / f"dropped-{i}.db-wal").exists():  # the last connection's close takes the -wal along
            alive = "the checkpoint thread" if thread.is_alive() else "a connection (its -wal is there)"
            assert time.monotonic() < deadline, f"{alive} outlived its storage"
            gc.collect()
            time.sleep(0.05)


def test_the_exit_checkpoint_waits_for_a_background_one(tmp_path, monkeypatch) -> None:
    db = tmp_path / "exit.db"
    study = _study(f"sqlite:///{db}", "exit")
    study.tell(_ask(study), 1.0)
    monkeypatch.setattr(sqlite, "_AT_EXIT", {db})
    order = []
    with sqlite._CHECKPOINTING:  # a background checkpoint under way
        exiting = threading.Thread(target=lambda: (sqlite._checkpoint_all(), order.append("exit")))
        exiting.start()
        time.sleep(0.2)
        order.append("background done")
    exiting.join(10)
    assert order == ["background done", "exit"]
    assert not (tmp_path / "exit.db-wal").exists() or (tmp_path / "exit.db-wal").stat().st_size == 0


def test_a_confirmation_run_starts_running_with_its_configuration_and_owner_in_one_write(url, unique_name) -> None:
    """``start_owned``: one new RUNNING trial (nothing queued that another process could take), its
    configuration suggested as an enqueued trial's is, even where the space has changed since."""
    from autolr import keys, owner
    from autolr.claim import start_owned

    study = _study(url, unique_name)
    trial = start_owned(study, {"lr": 0.05, "optimizer": "sgd"}, {keys.SEED: 1000})
    stored = study.get_trials(deepcopy=False)
    assert [t.state for t in stored] == [TrialState.RUNNING] and stored[0].datetime_start is not None
    assert stored[0].user_attrs == {keys.SEED: 1000, keys.OWNER: owner.this_process()}
    assert trial.suggest_float("lr", 1e-4, 1.0, log=True) == 0.05
    assert trial.suggest_categorical("optimizer", ["adam", "sgd", "prodigy"]) == "sgd"  # choices wider than the search's: kept
    assert store.count_by_state(study) == {TrialState.RUNNING: 1}
    study.tell(trial, 0.5)
    assert study.trials[0].params == {"lr": 0.05, "optimizer": "sgd"}


def test_a_storage_created_in_the_block_is_opened_once(tmp_path, monkeypatch) -> None:
    """Within ``reusing_storages``, the storage that created a new SQLite file serves the next opens
    too (opening one checks the schema again: ~25 ms); whether a study exists reads one row."""
    url = f"sqlite:///{tmp_path}/new.db"
    opened = []
    real = store._open_storage
    monkeypatch.setattr(store, "_open_storage", lambda u, reading=False: opened.append(u) or real(u, reading=reading))
    with store.reusing_storages():
        first = store._storage(url)
        optuna.create_study(storage=first, study_name="s")
        assert store._storage(url) is first and store._storage(url, reading=True) is first
        assert store.exists("s", url) and not store.exists("t", url)
    assert opened == [url]
    assert not store.exists("s", f"sqlite:///{tmp_path}/missing.db") and not (tmp_path / "missing.db").exists()
