"""MLflow tracking under real faults (issue 11): the writer process killed mid-trial, the store's disk
full, a tracking server that hangs after the start. Each checks that nothing is lost (both stores agree,
through ``faultkit.assert_stores_agree``), that no run is left RUNNING, and that one line says what
happened."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import psutil
import pytest
from faultkit import assert_stores_agree, autolr_process, running_trial, wait_for
from mlflow.tracking import MlflowClient

from autolr.tracking import Tracker
from autolr.tracking._spool import Spool

STUDY = """\
name: {name}
task: digits_mlp
task_args: {{hidden: 16}}
train: {{epochs: {epochs}, batch_size: 8}}
objective: {{metric: val_loss, direction: minimize}}
trials: {trials}
seed: 0
sampler: random
confirm: false
search:
  lr: {{low: 1.0e-3, high: 0.05}}
  optimizer: {{sgd: {{momentum: 0.9}}}}
  schedule: {{constant: {{}}}}
pruning: {{divergence: true, curve: none}}
"""


@pytest.fixture
def spool_dir(tmp_path: Path, monkeypatch) -> Path:
    folder = tmp_path / "spool"
    monkeypatch.setenv("AUTOLR_SPOOL_DIR", str(folder))
    return folder


def _study(tmp_path: Path, name: str, *, trials: int = 4, epochs: int = 25) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(STUDY.format(name=name, trials=trials, epochs=epochs), encoding="utf-8")
    return path


def _writer_pid(parent_pid: int) -> int | None:
    """The MLflow writer process of an ``autolr tune`` process (its child running autolr.tracking._writer)."""
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(parent_pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if "autolr.tracking._writer" in " ".join(child.cmdline()):
                    return child.pid
    return None


def _points(tracking_uri: str, run_id: str, key: str = "train_loss") -> list[int]:
    return [m.step for m in MlflowClient(tracking_uri).get_metric_history(run_id, key)]


# --- a writer that dies -------------------------------------------------------------------------------------


def test_a_killed_writer_loses_no_point_and_the_run_goes_on(stores, spool_dir, caplog) -> None:
    """SIGKILL to the writer between two hand-overs of one trial: a new writer takes over the run, and
    every point (those the dead one had not confirmed included) is there once."""
    tracker = Tracker(stores["tracking_uri"], experiment="killed-writer")
    run = tracker.trial_run(None, 0, {"lr": 0.1})
    with run:
        for first in range(0, 400, 4):
            run.log_steps(first, {"train_loss": [float(s) for s in range(first, first + 4)]})
            run.flush()
            if first == 100:
                tracker.flush()  # the run and its first points confirmed: the next writer adopts the run
            if first == 200:  # sent, and not confirmed yet: the next writer gets them again
                os.kill(tracker._writer.link.pid, signal.SIGKILL)
        run.end("COMPLETE")
    run_id = run.run_id
    tracker.close()
    assert sorted(_points(stores["tracking_uri"], run_id)) == list(range(400))
    got = MlflowClient(stores["tracking_uri"]).get_run(run_id)
    assert got.info.status == "FINISHED" and got.data.tags["autolr.state"] == "COMPLETE"
    assert "died (signal 9)" in caplog.text and "no point lost" in caplog.text
    assert not Spool(stores["tracking_uri"]).pending()


def test_a_writer_killed_again_and_again_ends_in_this_process(stores, spool_dir, caplog, monkeypatch) -> None:
    """Past the bounded number of restarts the writer runs as a thread of the training process."""
    monkeypatch.setattr("autolr.tracking._supervisor.MAX_RESTARTS", 1)
    tracker = Tracker(stores["tracking_uri"], experiment="killed-often")
    run = tracker.trial_run(None, 0, {"lr": 0.1})
    with run:
        for first in range(0, 60, 4):
            run.log_steps(first, {"train_loss": [float(s) for s in range(first, first + 4)]})
            run.flush()
            link = tracker._writer.link
            if hasattr(link, "proc"):
                tracker.flush()
                os.kill(link.pid, signal.SIGKILL)
                link.proc.wait()
        run.end("COMPLETE")
    tracker.close()
    assert sorted(_points(stores["tracking_uri"], run.run_id)) == list(range(60))
    assert caplog.text.count("died (signal 9)") == 2 and "writing from this process" in caplog.text


def test_tune_survives_its_writer_killed_mid_trial(tmp_path, stores, spool_dir) -> None:
    """The issue's case: ``autolr tune`` of 4 trials, the writer killed by SIGKILL from outside during
    the second trial: exit 0, one line says so, and both stores agree, every point there."""
    path = _study(tmp_path, "writer-kill")
    args = ["tune", str(path), "--storage", stores["storage"], "--tracking-uri", stores["tracking_uri"]]
    proc = autolr_process(*args, env={"AUTOLR_SPOOL_DIR": str(spool_dir)})
    try:
        wait_for(lambda: _finished(stores["storage"], "writer-kill") >= 1 and running_trial(stores["storage"], "writer-kill"), 240, "the second trial")
        time.sleep(1.0)  # into the trial: some of its points written, some not yet confirmed
        pid = _writer_pid(proc.pid)
        assert pid is not None, "no writer process found"
        os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert f"the MLflow writer (pid {pid}) died (signal 9)" in err and "no point lost" in err, err
    assert "Traceback" not in err, err
    assert_stores_agree(stores["storage"], stores["tracking_uri"], "writer-kill", target=4)
    assert not Spool(stores["tracking_uri"]).pending()


def _finished(storage: str, name: str) -> int:
    import optuna

    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return 0
    return sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.get_trials(deepcopy=False))
