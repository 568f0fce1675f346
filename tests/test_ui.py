"""`autolr ui`: a real MLflow server over a tuned study's store answers the REST API, serves the plots,
and its experiment page loads in headless Chromium (where Chromium is installed). A study tracked by
such a server survives the server dying mid-study, and nothing tracked is lost once it is back."""

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

import optuna
import pytest
from mlflow.tracking import MlflowClient

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
    assert roles == ["confirm", "study", "trial", "trial", "trial"]  # the winner re-trained on a fresh seed beside the trials
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


DYING_TASK = """
import os
import signal
import time
import urllib.request

from autolr.tasks import wine_mlp

built = 0


def factory(**kwargs):
    global built
    built += 1
    if built == 3:  # the pre-flight build, trial 0, then trial 1 starts: the tracking server goes away
        os.killpg(int(os.environ["AUTOLR_TEST_SERVER_PGID"]), signal.SIGTERM)  # `autolr ui` stops MLflow's session
        for _ in range(300):
            try:
                urllib.request.urlopen(os.environ["AUTOLR_TEST_SERVER"] + "/health", timeout=1)
            except OSError:
                break
            time.sleep(0.1)
    return wine_mlp(**kwargs)
"""


def test_server_dying_mid_study_loses_nothing(tmp_path, monkeypatch, caplog) -> None:
    """The server is killed as trial 1 starts: the study finishes on time, every trial in Optuna; the
    writer holds the points, keeps them in the spool folder at exit, and the next run writes them."""
    (tmp_path / "dying_task.py").write_text(textwrap.dedent(DYING_TASK))
    study = textwrap.dedent(STUDY).replace("task: wine_mlp", "task: dying_task:factory").replace("trials: 3", "trials: 4")
    (tmp_path / "study.yaml").write_text(study.replace("name: ui-study", "name: dying"))
    store = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    port = _free_port()
    proc, base = _start_ui(store, port, tmp_path / "ui.log")
    spool = tmp_path / "spool"
    monkeypatch.setenv("AUTOLR_SPOOL_DIR", str(spool))
    monkeypatch.setenv("AUTOLR_TEST_SERVER_PGID", str(proc.pid))
    monkeypatch.setenv("AUTOLR_TEST_SERVER", base)
    monkeypatch.syspath_prepend(str(tmp_path))
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    try:
        result = autolr.tune(tmp_path / "study.yaml", storage=storage, tracking_uri=base)
        assert proc.wait(30) is not None, "the task was to stop the server"
    finally:
        _stop(proc)
    assert result.count(optuna.trial.TrialState.COMPLETE) == 4
    log = caplog.text
    assert "stopped answering" in log and "could not be written" in log and str(spool) in log
    assert list(spool.glob("*/*.pkl")), "the unsent points were kept on disk"

    proc, base = _start_ui(store, port, tmp_path / "ui.log")  # the server is back, on the same store
    try:
        again = autolr.tune(tmp_path / "study.yaml", storage=storage, tracking_uri=base)  # target met: it only writes what was kept
        assert again.parent_run_id is None
    finally:
        _stop(proc)
    assert not list(spool.glob("*/*.pkl"))
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("dying").experiment_id])
    trials = {int(r.data.tags["autolr.trial"]): r for r in runs if r.data.tags.get("autolr.role") == "trial"}
    assert sorted(trials) == [0, 1, 2, 3]
    assert all(r.info.status != "RUNNING" for r in runs)
    by_number = {t.number: t for t in optuna.load_study(study_name="dying", storage=storage).trials}
    for number, run in trials.items():
        assert run.data.tags["autolr.state"] == "COMPLETE"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
        assert steps == list(range(by_number[number].user_attrs["autolr.steps"]))
        assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 2  # one point per epoch


def _chromium(url: str, tmp_path: Path, *, screenshot: Path | None = None, expect: tuple[str, ...] = ()) -> str:
    """The DOM headless Chromium renders at ``url`` (and a screenshot, when asked); rendered again, up
    to three times, while a text in ``expect`` is missing (on a loaded machine the page's API calls
    can outlast Chromium's virtual-time budget; the assertions then see what the last try rendered)."""
    for _ in range(3):
        dom = _render(url, tmp_path, screenshot)
        if all(text in dom for text in expect):
            break
    return dom


def _render(url: str, tmp_path: Path, screenshot: Path | None) -> str:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=20000",
             "--window-size=1800,1000"]  # fmt: skip
    if screenshot is not None:
        subprocess.run([CHROMIUM, *flags, f"--screenshot={screenshot}", url], capture_output=True, timeout=120)
    return subprocess.run([CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian package `chromium`); the browser check needs it")
def test_trials_view_lists_the_trials_flat_with_their_objective_in_the_model_training_view(ui, tmp_path) -> None:
    from autolr.tracking import trials_view_links

    tracking_uri = f"sqlite:///{ui['folder'] / 'mlruns' / 'mlflow.db'}"
    path = trials_view_links(tracking_uri)["ui-study"]
    best = ui["result"].best.value
    dom = _chromium(ui["base"] + path, tmp_path, screenshot=tmp_path / "trials.png", expect=("trial-0", "val_loss", f"{best:.4f}"[:5]))
    assert "Model training" in dom and "Overview" not in dom.split("Runs", 1)[0][-200:]
    assert all(f"trial-{n}" in dom for n in range(3)) and "val_loss" in dom
    assert f"{best:.4f}"[:5] in dom  # the objective column holds the values, without a click


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian package `chromium`); the browser check needs it")
def test_parent_run_charts_the_study(ui, tmp_path) -> None:
    experiments = json.loads(_get(f"{ui['base']}/api/2.0/mlflow/experiments/search?max_results=100"))["experiments"]
    experiment_id = next(e["experiment_id"] for e in experiments if e["name"] == "ui-study")
    url = f"{ui['base']}/#/experiments/{experiment_id}/runs/{ui['result'].parent_run_id}/model-metrics?workflowType=machine_learning"
    dom = _chromium(url, tmp_path, screenshot=tmp_path / "parent.png", expect=("best_so_far", "objective"))
    assert "best_so_far" in dom and "objective" in dom


def test_experiment_is_marked_model_training(ui) -> None:
    experiments = json.loads(_get(f"{ui['base']}/api/2.0/mlflow/experiments/search?max_results=100"))["experiments"]
    (experiment,) = [e for e in experiments if e["name"] == "ui-study"]
    tags = {t["key"]: t["value"] for t in experiment.get("tags", [])}
    assert tags["mlflow.experimentKind"] == "custom_model_development"


def test_optuna_dashboard_lists_the_study(ui, tmp_path) -> None:
    if shutil.which("optuna-dashboard") is None and not (Path(sys.executable).parent / "optuna-dashboard").exists():
        pytest.skip("optuna-dashboard is not installed (pip install optuna-dashboard, in the test extra)")
    exe = shutil.which("optuna-dashboard") or str(Path(sys.executable).parent / "optuna-dashboard")
    port = _free_port()
    proc = subprocess.Popen([exe, f"sqlite:///{ui['folder'] / 'optuna.db'}", "--port", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                studies = json.loads(_get(f"http://127.0.0.1:{port}/api/studies"))
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("optuna-dashboard did not answer")
                time.sleep(0.5)
    finally:
        _stop(proc)
    assert "ui-study" in [s["study_name"] for s in studies["study_summaries"]]
