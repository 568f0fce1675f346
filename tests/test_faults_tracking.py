"""MLflow tracking under real faults (issue 11): the writer process killed mid-trial, the store's disk
full, a tracking server that hangs after the start. Each checks that nothing is lost (both stores agree,
through ``faultkit.assert_stores_agree``), that no run is left RUNNING, and that one line says what
happened."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest
from faultkit import assert_stores_agree, autolr_process, run_autolr, running_trial, trials_beside, wait_for
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID as PARENT

from autolr import keys
from autolr.tracking import Tracker
from autolr.tracking._errors import StoreFullError
from autolr.tracking._messages import CreateRun, RunBatch, RunEnd
from autolr.tracking._spool import Spool
from autolr.tracking._store import open_client

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
    path = _study(tmp_path, "writer-kill", epochs=12)  # seconds a trial, long enough to be killed in; the suite's time is in these
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
    return sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials_beside(storage, name))


# --- a tracking server that hangs ---------------------------------------------------------------------------

SERVER = """\
import os, sys
os.environ["_MLFLOW_SERVER_FILE_STORE"], os.environ["_MLFLOW_SERVER_ARTIFACT_ROOT"] = sys.argv[1], sys.argv[2]
from mlflow.server import app
from werkzeug.serving import make_server
server = make_server("127.0.0.1", 0, app, threaded=True)
print(server.server_port, flush=True)
server.serve_forever()
"""


class HangingProxy:
    """A TCP proxy in front of an HTTP server; once ``hang`` is set it still accepts connections and
    reads requests, and never answers (a server that hangs, not one that is gone)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.hang = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.sockets.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        except OSError:
            client.close()
            return
        self.sockets.append(upstream)
        threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()
        self._pipe(client, upstream)

    def _pipe(self, source: socket.socket, target: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(1 << 16):
                if not self.hang.is_set():  # hung: what arrives is swallowed, nothing goes back
                    target.sendall(data)


@pytest.fixture
def mlflow_server(tmp_path: Path):
    """A real MLflow tracking server (its Flask app, in a process of its own) behind a HangingProxy;
    yields (proxy, the server's backend store URI)."""
    backend = f"sqlite:///{tmp_path / 'server' / 'mlflow.db'}"
    (tmp_path / "server").mkdir()
    proc = subprocess.Popen([sys.executable, "-c", SERVER, backend, str(tmp_path / "server" / "artifacts")], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        proxy = HangingProxy(port)
        wait_for(lambda: _answers(f"http://127.0.0.1:{proxy.port}/health"), 120, "the MLflow server")
        yield proxy, backend
        proxy.close()
    finally:
        proc.kill()
        proc.wait()


def _answers(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - the test's own server
            return True
    except OSError:
        return False


def test_a_server_that_hangs_costs_seconds_at_the_end_and_the_next_run_delivers(tmp_path, stores, spool_dir, mlflow_server) -> None:
    """The server answers the start-up checks, then hangs mid-study: the invocation ends anyway (its
    wait on the server bounded, AUTOLR_TRACKING_WAIT_S), says how many points wait in the spool, and
    the next invocation, the server answering again, delivers them: both stores then agree."""
    proxy, backend = mlflow_server
    path = _study(tmp_path, "hung-server", trials=3, epochs=10)
    uri = f"http://127.0.0.1:{proxy.port}"
    args = ["tune", str(path), "--storage", stores["storage"], "--tracking-uri", uri]
    env = {"AUTOLR_SPOOL_DIR": str(spool_dir), "AUTOLR_TRACKING_WAIT_S": "5"}
    proc = autolr_process(*args, env=env)
    try:
        wait_for(lambda: _finished(stores["storage"], "hung-server") >= 1 and running_trial(stores["storage"], "hung-server"), 240, "the second trial")
        proxy.hang.set()
        out, err = proc.communicate(timeout=400)  # generous: a loaded machine; the bound is seconds
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "is given up for this invocation" in err and "they wait in the spool" in err, err
    assert "Traceback" not in err, err
    assert Spool(uri).pending()
    proxy.hang.clear()
    # the bound is the hung run's: delivering 12,000 points to a server on a loaded machine may pause longer than 5 s
    again = run_autolr(*args, env={**env, "AUTOLR_TRACKING_WAIT_S": "60"}, timeout_s=400)
    assert again.returncode == 0, again.stderr
    assert not Spool(uri).pending(), again.stderr
    assert_stores_agree(stores["storage"], backend, "hung-server", target=3)


# --- a full disk under the MLflow store ----------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A real 2 MB filesystem (tmpfs; needs root), grown to 256 MB by ``grow()``; skips where it
    cannot be mounted."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")

    def grow() -> None:
        subprocess.run(["mount", "-o", "remount,size=256m", str(folder)], check=True)

    try:
        yield folder, grow
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _store_on(folder: Path, tmp_path: Path) -> str:
    """An MLflow store that exists (made elsewhere: creating its tables needs more room than the tiny
    disk has, transiently), moved onto ``folder``; its URI."""
    made = tmp_path / "made" / "mlflow.db"
    open_client(f"sqlite:///{made}")
    with contextlib.closing(sqlite3.connect(made)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the .db file alone then holds the store
    shutil.copy(made, folder / "mlflow.db")
    return f"sqlite:///{folder / 'mlflow.db'}"


def test_a_full_disk_under_the_store_spools_and_the_next_run_delivers(tmp_path, stores, spool_dir, tiny_disk) -> None:
    """The MLflow store on a 2 MB disk that fills mid-study (the spool on another disk): training goes
    on, one line names the store and its disk, no traceback; the next invocation, with space,
    delivers the spool and closes what was left open: both stores then agree."""
    folder, grow = tiny_disk
    tracking_uri = _store_on(folder, tmp_path)
    path = _study(tmp_path, "full-disk", trials=3, epochs=10)
    args = ["tune", str(path), "--storage", stores["storage"], "--tracking-uri", tracking_uri]
    env = {"AUTOLR_SPOOL_DIR": str(spool_dir)}
    first = run_autolr(*args, env=env, timeout_s=400)
    assert first.returncode == 0, first.stderr
    assert f"the disk of the MLflow tracking store {folder / 'mlflow.db'} (on the filesystem mounted at {folder}) is full" in first.stderr, first.stderr
    assert "they wait in the spool" in first.stderr and "Traceback" not in first.stderr, first.stderr
    grow()
    # the delivering run's wait bound is its own: the first run's 5 s is what that run tests
    again = run_autolr(*args, env={**env, "AUTOLR_TRACKING_WAIT_S": "60"}, timeout_s=400)
    assert again.returncode == 0, again.stderr
    assert not Spool(tracking_uri).pending(), again.stderr
    assert_stores_agree(stores["storage"], tracking_uri, "full-disk", target=3)


def test_a_full_disk_under_the_store_and_its_spool_says_what_is_lost(tmp_path, tiny_disk, monkeypatch, caplog) -> None:
    """Store and spool on one full disk: the points that fit nowhere are named in one line, no traceback."""
    folder, _ = tiny_disk
    monkeypatch.setenv("AUTOLR_SPOOL_DIR", str(folder / "spool"))
    tracker = Tracker(_store_on(folder, tmp_path), experiment="full-everywhere", writer="thread")
    other = tracker.client.create_run(tracker.experiment_id).info.run_id
    run = tracker.trial_run(None, 0, {"lr": 0.1})
    with run:
        for first in range(0, 200_000, 1000):
            run.log_steps(first, {"train_loss": [float(s) for s in range(first, first + 1000)]})
            run.flush()
        run.end("COMPLETE")
    tracker.close()
    assert "is full (database or disk is full)" in caplog.text
    assert "could not keep the unsent MLflow points" in caplog.text and "they are lost" in caplog.text
    assert "Traceback" not in caplog.text
    with pytest.raises(StoreFullError, match=rf"^the disk of the MLflow tracking store {folder}/mlflow.db \(on the filesystem mounted at {folder}\) is full"):
        tracker.log_text(other, "x" * 3_000_000, "big.txt")  # the tracker's own writes: one line too


def test_the_next_invocation_closes_runs_whose_end_was_lost(stores) -> None:
    """An invocation whose process is gone, with a trial run whose end could be neither written nor
    kept: both end KILLED, as the next invocation tidies up."""
    tracker = Tracker(stores["tracking_uri"], experiment="lost-ends")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    tags = {keys.ROLE: keys.ROLE_STUDY, keys.HOST: socket.gethostname(), keys.PID: gone.stdout.strip()}
    parent = tracker.client.create_run(tracker.experiment_id, tags=tags).info.run_id
    child = tracker.client.create_run(tracker.experiment_id, tags={keys.ROLE: keys.ROLE_TRIAL, keys.TRIAL: "0", PARENT: parent}).info.run_id
    assert tracker.close_orphans({}) == 2
    for run_id in (parent, child):
        assert tracker.client.get_run(run_id).info.status == "KILLED"
    assert tracker.client.get_run(child).data.tags[keys.STATE] == "FAIL"


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "public-log-batch"])
def test_a_spool_delivered_twice_leaves_one_run_with_each_point_once(stores, spool_dir, fast_path) -> None:
    """A writer that wrote a spool file and died before removing it: the next one delivers the file
    again, and the store still holds one run with each point once. Through MLflow's public API (an
    HTTP server, an MLflow the fast path is not verified on) the store names the run itself, and the
    next writer finds it by the id the training side drew, kept as a tag."""
    tracker = Tracker(stores["tracking_uri"], experiment="twice", writer="thread", fast_path=fast_path)
    new_run = CreateRun(0, tracker.experiment_id, "trial-0", {keys.TRIAL: "0"}, {"lr": "0.1"}, 1_700_000_000_000, run_uuid=uuid.uuid4().hex)
    points = [("train_loss", float(s), 1_700_000_000_000, s) for s in range(500)]
    batch = RunBatch(None, new_run=new_run, points=points, end=RunEnd("FINISHED", 1_700_000_001_000))
    for _ in range(2):
        Spool(stores["tracking_uri"]).save({0: dataclasses.replace(batch, points=list(points))})
        tracker.write_unsent()
        tracker.close()
    (run,) = MlflowClient(stores["tracking_uri"]).search_runs([tracker.experiment_id])
    if fast_path:
        assert run.info.run_id == new_run.run_uuid and keys.RUN_UUID not in run.data.tags
    else:
        assert run.data.tags[keys.RUN_UUID] == new_run.run_uuid
    assert run.info.status == "FINISHED" and run.data.params == {"lr": "0.1"}
    assert sorted(_points(stores["tracking_uri"], run.info.run_id)) == list(range(500))


def test_a_store_that_refuses_the_search_for_a_spooled_run_gets_it_created(stores, spool_dir, monkeypatch, caplog) -> None:
    """Whether a spooled run was created before is looked up by its id, then by its autolr.run_uuid
    tag; a store that answers the search with an error (not an outage) gets the run created, with a
    warning: a run twice is better than its points lost."""
    from mlflow.exceptions import MlflowException

    from autolr.tracking._writer import Writer

    writer = Writer(stores["tracking_uri"], lambda msg: None, fast_path=False)
    experiment = writer.client.create_experiment("refused")
    new_run = CreateRun(0, experiment, "trial-0", {keys.TRIAL: "0"}, {"lr": "0.1"}, 1_700_000_000_000, run_uuid=uuid.uuid4().hex, resumed=True)
    created = writer._create_through_api(new_run)
    assert writer._created_before(new_run) == created  # found by its tag: the store named it otherwise

    def refuse(*args, **kwargs):
        raise MlflowException("Invalid filter string")

    monkeypatch.setattr(writer.client, "search_runs", refuse)
    assert writer._created_before(new_run) is None
    assert "could not search the MLflow store for the run trial-0" in caplog.text


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "public-log-batch"])
def test_a_long_outage_backlog_is_written_in_chunks_once(stores, spool_dir, monkeypatch, fast_path) -> None:
    """A held backlog larger than a chunk goes in several transactions: one run, each point once."""
    monkeypatch.setattr("autolr.tracking._writer.CHUNK_POINTS", 1000)
    tracker = Tracker(stores["tracking_uri"], experiment="chunks", writer="thread", fast_path=fast_path)
    new_run = CreateRun(0, tracker.experiment_id, "trial-0", {keys.TRIAL: "0"}, {"lr": "0.1"}, 1_700_000_000_000, run_uuid=uuid.uuid4().hex)
    points = [("train_loss", float(s), 1_700_000_000_000, s) for s in range(3500)]
    Spool(stores["tracking_uri"]).save({0: RunBatch(None, new_run=new_run, points=points, end=RunEnd("FINISHED", 1_700_000_001_000))})
    tracker.write_unsent()
    tracker.close()
    (run,) = MlflowClient(stores["tracking_uri"]).search_runs([tracker.experiment_id])
    assert run.info.status == "FINISHED" and sorted(_points(stores["tracking_uri"], run.info.run_id)) == list(range(3500))
