"""What the fault tests share: running ``autolr`` in a real process, and checking that both stores
agree after a fault (every finished trial has exactly one closed MLflow run holding all its points,
nothing left RUNNING, the target reached exactly)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import filelock
import optuna
from mlflow.tracking import MlflowClient

from autolr import keys

CLI = "import sys; from autolr.cli import main; sys.exit(main(sys.argv[1:]))"


def autolr_process(*args: str, env: dict[str, str] | None = None, cwd: str | Path | None = None) -> subprocess.Popen:
    """``autolr ARGS...`` in its own process (this interpreter, this checkout), output captured as text."""
    env = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, "-c", CLI, *args], env=env, cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def trials_beside(storage: str, name: str) -> list[optuna.trial.FrozenTrial]:
    """The study's trials as a reader beside a running ``autolr`` sees them: none before its SQLite file
    and the study exist. The read takes the lock autolr holds while it creates the file's tables
    (``autolr.sqlite.prepared``): Optuna, opening a store, creates any table it misses, and a reader doing
    so at the same moment races the writer (``UNIQUE constraint failed: alembic_version``)."""
    path = Path(storage[len("sqlite:///") :]) if storage.startswith("sqlite:///") else None
    if path is not None and not path.exists():
        return []
    with filelock.FileLock(f"{path}.lock", timeout=120) if path is not None else contextlib.nullcontext():
        rdb = optuna.storages.RDBStorage(storage)
    # its engine closed at once: a poll every 0.1 s that leaves each engine's pooled connection to the
    # garbage collector held over 100 idle connections to PostgreSQL on a loaded machine ("too many clients")
    try:
        return optuna.load_study(study_name=name, storage=rdb).get_trials(deepcopy=False)
    except KeyError:
        return []
    finally:
        rdb.engine.dispose()


def run_autolr(*args: str, env: dict[str, str] | None = None, cwd: str | Path | None = None, timeout_s: float = 300) -> subprocess.CompletedProcess:
    proc = autolr_process(*args, env=env, cwd=cwd)
    out, err = proc.communicate(timeout=timeout_s)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def wait_for(predicate: Callable[[], bool], timeout_s: float = 180.0, what: str = "the condition") -> None:
    """Poll ``predicate`` until it holds; the limit only bounds a hang (a loaded CI machine took over
    60 s to start one autolr process's first trial), it costs nothing when the predicate holds."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def running_trial(storage: str, name: str) -> bool:
    """Whether the study exists and has a trial RUNNING (for killing a process mid-trial)."""
    return any(t.state.name == "RUNNING" for t in trials_beside(storage, name))


def assert_stores_agree(storage: str, tracking_uri: str, name: str, target: int | None = None) -> optuna.Study:
    """Both stores after a fault: nothing RUNNING anywhere, exactly ``target`` finished trials (when
    given), and each finished trial with exactly one closed MLflow run whose state tag matches and
    whose ``train_loss`` holds one point per step the trial ran."""
    study = optuna.load_study(study_name=name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    states = [t.state.name for t in trials]
    assert "RUNNING" not in states and "WAITING" not in states, states
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    if target is not None:
        assert len(finished) == target, f"{len(finished)} finished trials, target {target}: {states}"
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None, f"no MLflow experiment {name!r}"
    runs = client.search_runs([experiment.experiment_id], max_results=5000)
    running = [(r.info.run_name, {k: v for k, v in r.data.tags.items() if k.startswith("autolr.")}) for r in runs if r.info.status == "RUNNING"]
    assert not running, f"MLflow runs left RUNNING: {running}"
    by_trial: dict[int, list] = {}
    for run in runs:
        if keys.TRIAL in run.data.tags:
            by_trial.setdefault(int(run.data.tags[keys.TRIAL]), []).append(run)
    for trial in finished:
        found = by_trial.get(trial.number, [])
        assert len(found) == 1, f"trial {trial.number}: {len(found)} MLflow runs"
        run = found[0]
        assert run.info.status == "FINISHED", f"trial {trial.number}: run {run.info.status}"
        assert run.data.tags.get(keys.STATE) == trial.state.name
        steps = trial.user_attrs.get(keys.STEPS)
        if steps:
            points = client.get_metric_history(run.info.run_id, "train_loss")
            assert len(points) == steps, f"trial {trial.number}: {len(points)} train_loss points of {steps} steps"
    return study
