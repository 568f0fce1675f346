"""Every example under examples/ runs end to end, on its own study file and code, shortened by
``AUTOLR_EXAMPLE_QUICK=1`` (less data, fewer epochs; each example's docstring says what it shrinks)
and ``trials=2``: trials COMPLETE, per-step curves in MLflow, the winner exported and rebuilt."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

import autolr

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch):
    """Quick mode, and the examples' modules imported afresh so that they read it."""
    monkeypatch.setenv("AUTOLR_EXAMPLE_QUICK", "1")
    for name in ("char_lm", "train", "retrain"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.chdir(ROOT)  # the study files' code is found from the repository root, as the READMEs run it


def _tune_and_check(study_file: Path, stores: dict[str, str], tmp_path: Path) -> autolr.BestConfig:
    result = autolr.tune(study_file, trials=2, progress=False, **stores)
    states = [t.state for t in result.trials]
    assert len(states) == 2 and TrialState.FAIL not in states, [(t.state, t.user_attrs.get("autolr.error")) for t in result.trials]
    assert result.best is not None and result.best.state == TrialState.COMPLETE and math.isfinite(result.best.value)
    logged_lrs = _check_step_curves(stores["tracking_uri"], result.study_name, result.best)
    best_path = tmp_path / "best.yaml"
    autolr.export_best(study_file, storage=stores["storage"], path=best_path)
    best = autolr.load_best(best_path)
    winner = best.confirmed["trial"] if best.confirmed else result.best.number  # the best mean over fresh seeds, when confirmed
    assert best.trial == winner and best.single_seed_value == pytest.approx(result.trials[winner].value)
    _check_rebuilds(best, logged_lrs)
    return best


def _check_step_curves(tracking_uri: str, experiment: str, trial) -> list[float]:
    """The trial's MLflow run: COMPLETE, a finite train_loss for every step, val_loss; returns its lr curve."""
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    (run,) = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("autolr.trial") == str(trial.number)]
    assert run.data.tags["autolr.state"] == "COMPLETE"
    losses = client.get_metric_history(run.info.run_id, "train_loss")
    assert len(losses) == trial.user_attrs["autolr.steps"] and all(math.isfinite(m.value) for m in losses)
    assert client.get_metric_history(run.info.run_id, "val_loss")
    return [m.value for m in sorted(client.get_metric_history(run.info.run_id, "lr"), key=lambda m: m.step)]


def _check_rebuilds(best: autolr.BestConfig, logged_lrs: list[float]) -> None:
    """load_best rebuilds the tuned optimizer, and its scheduler replays the lr curve the trial logged."""
    optimizer = best.build_optimizer(torch.nn.Linear(2, 1).parameters())
    assert type(optimizer).__name__.lower() == best.params["optimizer"]
    scheduler = best.build_scheduler(optimizer)  # total_steps: the tuned run's
    lrs = []
    for _ in range(best.total_steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx(logged_lrs, rel=1e-6)


def test_char_lm(quick, stores, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tune_and_check(EXAMPLES / "char_lm" / "study.yaml", stores, tmp_path)
    monkeypatch.syspath_prepend(str(EXAMPLES / "char_lm"))
    from retrain import retrain

    metrics = retrain(str(tmp_path / "best.yaml"))  # the README's round trip
    assert math.isfinite(metrics["loss"]) and 0.0 <= metrics["accuracy"] <= 1.0


def test_own_loop(quick, stores, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    best = _tune_and_check(EXAMPLES / "own_loop" / "study.yaml", stores, tmp_path)
    monkeypatch.syspath_prepend(str(EXAMPLES / "own_loop"))
    from train import retrain

    metrics = retrain(str(tmp_path / "best.yaml"))
    assert metrics["val_loss"] == pytest.approx(best.single_seed_value, rel=1e-4)  # the same loop, seed and data: the trial's value again


def test_notebook_style(stores, tmp_path: Path) -> None:
    env = {**os.environ, "AUTOLR_EXAMPLE_QUICK": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    # MLflow off: tune()'s tracking is the same for callables and is checked above; here it would cost its
    # writer process and plots twice over (about 14 of the 24 CPU seconds this test takes with it)
    cmd = [sys.executable, str(EXAMPLES / "notebook_style.py"), "--storage", stores["storage"], "--no-tracking", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "notebook-task: best single-seed trial" in proc.stdout and "notebook-loop: best single-seed trial" in proc.stdout
    for name in ("notebook-task", "notebook-loop"):
        best = autolr.load_best(tmp_path / f"best-{name}.yaml")
        optimizer = best.build_optimizer(torch.nn.Linear(2, 1).parameters())
        assert best.study == name and type(optimizer).__name__.lower() == best.params["optimizer"]
        best.build_scheduler(optimizer)
