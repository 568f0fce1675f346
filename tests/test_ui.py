"""`autolr ui`: a real MLflow server over a tuned study's store answers the REST API, serves the plots,
and its experiment page loads in headless Chromium (where Chromium is installed). A study tracked by
such a server survives the server dying mid-study, and nothing tracked is lost once it is back."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
from browser import CHROMIUM, Browser
from mlflow.tracking import MlflowClient

import autolr
from autolr.report import STUDY_PLOTS

STARTUP_TIMEOUT_S = 150
STUDY = """
    name: ui-study
    task: wine_mlp
    train: {epochs: 2, batch_size: 64}
    objective: {metric: val_loss, direction: minimize}
    trials: 3
    seed: 0
    sampler: random
    search:
      lr: {low: 1.0e-3, high: 1.0e-1}
      optimizer: {adam: {}}
      schedule: {constant: {}, cosine: {}}
    pruning: {divergence: true, curve: none}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout_s: float = 10.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - local test server
        return response.read()


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return json.loads(response.read())


def _wait_until_up(proc: subprocess.Popen, base: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"autolr ui exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            _get(f"{base}/health", timeout_s=2)
            return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"autolr ui did not answer within {STARTUP_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """A tuned study's store served by `autolr ui` on a free port; the server is always stopped."""
    folder = tmp_path_factory.mktemp("ui")
    (folder / "study.yaml").write_text(textwrap.dedent(STUDY))
    tracking_uri = f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as env:  # the plots the browser checks look at (conftest turns them off)
        env.setenv("AUTOLR_PLOTS", "1")
        result = autolr.tune(folder / "study.yaml", storage=f"sqlite:///{folder / 'optuna.db'}", tracking_uri=tracking_uri)
    assert result.wait_for_plots()
    proc, base = _start_ui(tracking_uri, _free_port(), folder / "ui.log")
    try:
        yield {"base": base, "result": result, "folder": folder}
    finally:
        _stop(proc)


def _start_ui(tracking_uri: str, port: int, log: Path) -> tuple[subprocess.Popen, str]:
    """`autolr ui` on ``port``, once it answers."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "autolr.cli", "ui", "--port", str(port), "--tracking-uri", tracking_uri],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the whole tree (autolr, mlflow, uvicorn workers) can be stopped at once
        )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(proc, base, log)
    except BaseException:
        _stop(proc)
        raise
    return proc, base


def _stop(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(15)
            return
        except subprocess.TimeoutExpired:
            continue


def test_rest_api_answers_with_the_study_experiment_and_its_runs(ui) -> None:
    experiments = json.loads(_get(f"{ui['base']}/api/2.0/mlflow/experiments/search?max_results=100"))["experiments"]
    (experiment,) = [e for e in experiments if e["name"] == "ui-study"]
    runs = _post(f"{ui['base']}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 100})["runs"]
    roles = sorted(next(t["value"] for t in r["data"]["tags"] if t["key"] == "autolr.role") for r in runs)
    assert roles == ["confirm", "confirm", "study", "trial", "trial", "trial"]  # the winner and its step back re-trained on a fresh seed beside the trials
    assert all(r["info"]["status"] in ("FINISHED", "FAILED", "KILLED") for r in runs)


def test_plots_are_served(ui) -> None:
    parent = ui["result"].parent_run_id
    png = _get(f"{ui['base']}/get-artifact?path=plots/stability_frontier.png&run_uuid={parent}")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    files = json.loads(_get(f"{ui['base']}/ajax-api/2.0/mlflow/artifacts/list?run_id={parent}&path=plots"))["files"]
    assert {f["path"] for f in files} == {f"plots/{name}" for name in STUDY_PLOTS}


def _experiment_id(ui) -> str:
    experiments = json.loads(_get(f"{ui['base']}/api/2.0/mlflow/experiments/search?max_results=100"))["experiments"]
    return next(e["experiment_id"] for e in experiments if e["name"] == "ui-study")


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian package `chromium`); the browser check needs it")


@needs_chromium
def test_a_fresh_browser_lands_on_the_trials_in_the_model_training_view(ui, tmp_path) -> None:
    """The experiment's page, opened as a user would (no view in the link), shows every trial flat with
    its objective in the model-training view: no toggle, no expander, no assistant panel."""
    with Browser(tmp_path / "profile") as browser:
        browser.open(f"{ui['base']}/#/experiments/{_experiment_id(ui)}")
        text = browser.wait_for_text("trial-0", "trial-1", "trial-2", "confirm-", "val_loss", "Sort: val_loss")
        png = browser.screenshot(tmp_path / "experiment.png")
        assert "workflowType=machine_learning" in browser.location()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000  # a rendered page, not a blank one
    lines = _lines(text)
    assert "Runs" in lines and "Traces" in lines  # the model-training side navigation, not GenAI's Overview
    assert "Overview" not in lines  # GenAI's landing tab
    assert "Compare the selected runs." not in text  # a suggestion of MLflow's assistant panel: it stays closed
    assert {"lr", "optimizer", "schedule"} <= set(lines)  # the configuration as columns


@needs_chromium
def test_a_trial_opens_on_its_main_curves_and_the_parent_charts_the_study(ui, tmp_path) -> None:
    client = MlflowClient(tracking_uri=f"sqlite:///{ui['folder'] / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([_experiment_id(ui)])
    trial = next(r for r in runs if r.data.tags.get("autolr.role") == "trial")
    assert any(k.startswith("weight_grad_norm.") for k in trial.data.metrics)  # per-layer statistics are there
    page = f"{ui['base']}/#/experiments/{_experiment_id(ui)}/runs"
    with Browser(tmp_path / "profile") as browser:
        browser.open(f"{page}/{trial.info.run_id}/model-metrics")
        charts = _lines(browser.wait_for_text("train_loss", "weight_grad_norm.", "val_loss"))
        browser.screenshot(tmp_path / "trial.png")
        browser.open(f"{page}/{ui['result'].parent_run_id}/model-metrics")
        study = _lines(browser.wait_for_text("best_so_far", "objective"))
        browser.screenshot(tmp_path / "parent.png")
    titles = charts[charts.index("Model metrics") :]
    first_layer_chart = next(i for i, t in enumerate(titles) if t.startswith("weight_"))
    assert {"train_loss", "lr", "grad_norm"} <= set(titles[:first_layer_chart])  # the main curves come first
    assert "study" in study  # the study's own section: objective and best so far per trial
