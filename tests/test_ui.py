"""`autolr ui`: a real MLflow server over a tuned study's store answers the REST API, serves the plots,
and its experiment page loads in headless Chromium (where Chromium is installed)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

import autolr
from autolr.report import STUDY_PLOTS

STARTUP_TIMEOUT_S = 150
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
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
    result = autolr.tune(folder / "study.yaml", storage=f"sqlite:///{folder / 'optuna.db'}", tracking_uri=tracking_uri)
    port = _free_port()
    log = folder / "ui.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "autolr.cli", "ui", "--port", str(port), "--tracking-uri", tracking_uri],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the whole tree (autolr, mlflow, uvicorn workers) can be stopped at once
        )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(proc, base, log)
        yield {"base": base, "result": result, "folder": folder}
    finally:
        _stop(proc)


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
    assert roles == ["study", "trial", "trial", "trial"]
    assert all(r["info"]["status"] in ("FINISHED", "FAILED", "KILLED") for r in runs)


def test_plots_are_served(ui) -> None:
    parent = ui["result"].parent_run_id
    png = _get(f"{ui['base']}/get-artifact?path=plots/stability_frontier.png&run_uuid={parent}")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    files = json.loads(_get(f"{ui['base']}/ajax-api/2.0/mlflow/artifacts/list?run_id={parent}&path=plots"))["files"]
    assert {f["path"] for f in files} == {f"plots/{name}" for name in STUDY_PLOTS}


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian package `chromium`); the browser check needs it")
def test_experiment_page_loads_in_headless_chromium(ui, tmp_path) -> None:
    experiments = json.loads(_get(f"{ui['base']}/api/2.0/mlflow/experiments/search?max_results=100"))["experiments"]
    experiment_id = next(e["experiment_id"] for e in experiments if e["name"] == "ui-study")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=20000"]  # fmt: skip
    done = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", f"{ui['base']}/#/experiments/{experiment_id}/runs"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    dom = done.stdout
    assert "MLflow" in dom, done.stderr[-2000:]
    assert "ui-study" in dom  # rendered by the page's scripts from the REST API, not in the static HTML
