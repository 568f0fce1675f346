"""Faults of processes and storages, injected for real: kill -9 and an immediate requeue, SIGTERM and
Ctrl-C with workers, a worker or the main process killed, a PostgreSQL outage through a TCP proxy, a
full disk (a real tmpfs), and the UI server's fate when ``autolr ui`` is killed."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from faultkit import assert_stores_agree, autolr_process, run_autolr, trials_beside, wait_for
from mlflow.tracking import MlflowClient

from autolr import keys

TASK = '''
import os, time
from autolr.tasks import digits_mlp

def make(counter, sleep_s=0.0, slow_calls=100):
    """Calls below ``slow_calls`` sleep ``sleep_s`` per step (time to inject a fault); later ones do not."""
    with open(counter, "a") as f:
        f.write("x")
    n = os.path.getsize(counter) - 1
    task = digits_mlp(hidden=8)
    loss = task.loss_fn
    def loss_fn(out, y):
        if n < slow_calls:
            time.sleep(sleep_s)
        return loss(out, y)
    task.loss_fn = loss_fn
    return task
'''
FAST = {"AUTOLR_HEARTBEAT_S": "1", "AUTOLR_GRACE_S": "2"}


def _study(tmp_path: Path, name: str, trials: int, **task_args) -> str:
    (tmp_path / "fault_task.py").write_text(TASK)
    args = ", ".join(f"{k}: {v!r}" for k, v in {"counter": str(tmp_path / f"{name}.count"), **task_args}.items())
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"""
name: {name}
task: "fault_task:make"
task_args: {{{args}}}
train: {{epochs: 2, batch_size: 256}}
trials: {trials}
search: {{lr: {{low: 0.001, high: 0.1}}, optimizer: {{sgd: {{}}}}, schedule: {{constant: {{}}}}}}
pruning: {{curve: none}}
confirm: false
""")
    return str(path)


def _stores(tmp_path: Path) -> tuple[str, str]:
    return f"sqlite:///{tmp_path / 'optuna.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}"


def _trials(storage: str, name: str) -> list:
    return trials_beside(storage, name)


def _running_owners(storage: str, name: str, *, drawn: bool = True) -> list[int]:
    """The PIDs running trials (``drawn``: only those whose configuration is drawn: a trial stopped
    before its draw has nothing to retry, and CI once signalled a spawned worker, slow to start under
    load, in that window)."""
    running = [t for t in _trials(storage, name) if t.state.name == "RUNNING" and keys.OWNER in t.user_attrs and (t.params or not drawn)]
    return [t.user_attrs[keys.OWNER]["pid"] for t in running]


def _two_running(storage: str, name: str) -> list[int]:
    """Wait for two processes to run trials with their configuration drawn; their PIDs, as the wait
    saw them (read again, a worker between two trials would be missing)."""
    seen: list[int] = []

    def two() -> bool:
        seen[:] = _running_owners(storage, name)
        return len(seen) == 2

    wait_for(two, timeout_s=180, what="two running trials")
    return list(seen)


def _training(storage: str, name: str) -> bool:
    """A trial is RUNNING with its owner and its configuration drawn (killed before the draw, a trial has
    no configuration to retry), in its first epoch: a kill sent now lands well before the trial's end
    (seen under load: a trial seen near its end had finished when the signal came)."""
    return any(t.state.name == "RUNNING" and keys.OWNER in t.user_attrs and t.params and not t.intermediate_values for t in _trials(storage, name))


def _fast_rest(tmp_path: Path, name: str) -> None:
    (tmp_path / f"{name}.count").write_text("x" * 100)  # the calls that follow do not sleep


def test_a_job_requeued_right_after_kill_9_reaches_the_target_and_retries_the_killed_configuration(tmp_path) -> None:
    storage, tracking = _stores(tmp_path)
    path = _study(tmp_path, "requeued", 3, sleep_s=0.1)  # ~0.6 s of steps an epoch
    args = ["tune", path, "--storage", storage, "--tracking-uri", tracking]
    proc = autolr_process(*args, env={"AUTOLR_GRACE_S": "600"})  # only the dead PID can tell, not the heartbeat
    wait_for(lambda: _training(storage, "requeued"), what="a trial training")  # its configuration drawn
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    shown = run_autolr("show", path, "--storage", storage).stdout  # before any tune has marked it failed
    (line,) = [ln for ln in shown.splitlines() if " RUNNING " in ln]
    assert (
        f"its process (pid {proc.pid}) is gone: the next autolr tune on the study marks it failed and, while the study is below its target, runs its configuration again"
        in line
    )
    _fast_rest(tmp_path, "requeued")
    done = run_autolr(*args, env={"AUTOLR_GRACE_S": "600"})  # at once, as a batch scheduler requeues
    assert done.returncode == 0, done.stderr[-2000:]
    study = assert_stores_agree(storage, tracking, "requeued", target=3)
    killed = next(t for t in study.trials if t.state.name == "FAIL")
    assert "is gone" in killed.user_attrs[keys.ERROR]
    retry = next(t for t in study.trials if t.user_attrs.get(keys.RETRY_OF) == killed.number)
    assert retry.state.name == "COMPLETE" and retry.params == killed.params
    client = MlflowClient(tracking)
    (run,) = client.search_runs([client.get_experiment_by_name("requeued").experiment_id], filter_string=f"tags.`{keys.TRIAL}` = '{retry.number}'")
    assert run.data.tags[keys.RETRY_OF] == str(killed.number)  # the MLflow run says what it retries, as autolr show does


def test_sigterm_is_a_ctrl_c_with_its_own_exit_code(tmp_path) -> None:
    storage, tracking = _stores(tmp_path)
    path = _study(tmp_path, "termed", 2, sleep_s=0.2)  # seconds a trial: time to see its points while it runs, on a loaded machine too
    args = ["tune", path, "--storage", storage, "--tracking-uri", tracking]
    proc = autolr_process(*args, env=FAST)
    client = MlflowClient(tracking)

    def points(number: int) -> int:
        with contextlib.suppress(Exception):
            exp = client.get_experiment_by_name("termed")
            runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get(keys.TRIAL) == str(number)]
            return len(client.get_metric_history(runs[0].info.run_id, "train_loss"))
        return 0

    def running() -> int | None:
        return next((t.number for t in _trials(storage, "termed") if t.state.name == "RUNNING"), None)

    wait_for(lambda: running() is not None and points(running()) > 0, what="points of a running trial")
    number = running()
    before = points(number) if number is not None else 0
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    stopped = next(t for t in _trials(storage, "termed") if t.state.name == "FAIL")
    assert stopped.user_attrs[keys.ERROR] == "interrupted (Ctrl-C or SIGTERM)"  # autolr show's reason column
    runs = client.search_runs([client.get_experiment_by_name("termed").experiment_id])
    run = next(r for r in runs if r.data.tags.get(keys.TRIAL) == str(stopped.number))
    kept = len(client.get_metric_history(run.info.run_id, "train_loss"))
    assert run.info.status == "KILLED" and kept >= (before if stopped.number == number else 1)  # its points up to the signal
    assert [r.info.status for r in runs if r.data.tags.get(keys.ROLE) == "study"] == ["KILLED"]
    _fast_rest(tmp_path, "termed")
    assert run_autolr(*args, env=FAST).returncode == 0
    assert_stores_agree(storage, tracking, "termed", target=2)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_with_two_workers_stops_them_all_without_tracebacks(tmp_path, sig) -> None:
    storage, tracking = _stores(tmp_path)
    # trials long enough, and more than run before the stop, that the spawned worker (seconds to start,
    # a minute on a loaded machine) joins the one here before the study is over
    path = _study(tmp_path, "stopped", 16, sleep_s=0.8)
    proc = autolr_process("tune", path, "--jobs", "2", "--storage", storage, "--tracking-uri", tracking, env=FAST)
    workers = _two_running(storage, "stopped")
    for pid in [proc.pid, *workers] if sig == signal.SIGINT else [proc.pid]:  # a terminal's Ctrl-C reaches the whole group
        os.kill(pid, sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == (130 if sig == signal.SIGINT else 143), err[-2000:]
    assert "Traceback" not in err, err[-3000:]
    trials = _trials(storage, "stopped")
    states = [t.state.name for t in trials]
    assert "RUNNING" not in states and states.count("FAIL") == 2, states
    # each worker queued its interrupted trial's configuration once, to run at the next invocation; a
    # trial that a worker had just asked for when the signal came (the one seen running ended in the
    # meantime, on a loaded machine) has no configuration yet, and nothing to retry (store._runs_again)
    retried = sorted(t.user_attrs.get(keys.RETRY_OF) for t in trials if t.state.name == "WAITING")
    shown = [(t.number, t.state.name, t.params) for t in trials]
    assert retried == [t.number for t in trials if t.state.name == "FAIL" and t.params], shown
    assert retried, shown  # both trials had drawn theirs when the signal came (_two_running): at least one is retried
    for pid in workers:
        wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists(), timeout_s=10, what=f"worker {pid} to end")


def test_workers_of_a_killed_main_process_stop_instead_of_finishing_the_study(tmp_path) -> None:
    storage, tracking = _stores(tmp_path)
    path = _study(tmp_path, "orphaned", 16, sleep_s=0.8)  # more trials than run before the kill, as above
    proc = autolr_process("tune", path, "--jobs", "2", "--storage", storage, "--tracking-uri", tracking, env=FAST)
    _two_running(storage, "orphaned")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    # the main process is worker 0: its own trial stays RUNNING until the next invocation fails it (at
    # once, its PID being gone); the spawned worker fails its trial as it stops
    wait_for(lambda: set(_running_owners(storage, "orphaned", drawn=False)) <= {proc.pid}, timeout_s=30, what="the workers to stop")
    started = lambda: sum(t.state.name != "WAITING" for t in _trials(storage, "orphaned"))  # noqa: E731 - a stopping worker queues its trial's retry
    count = started()
    time.sleep(2.0)
    assert started() == count  # nothing started after the stop
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in _trials(storage, "orphaned")) < 16


def test_a_worker_killed_outright_costs_its_trial_only(tmp_path) -> None:
    storage, tracking = _stores(tmp_path)
    path = _study(
        tmp_path, "lostworker", 8, sleep_s=0.8
    )  # ~10 s a trial: the spawned worker (seconds of imports, a minute under load) joins before worker 0 ends the study
    proc = autolr_process("tune", path, "--jobs", "2", "--storage", storage, "--tracking-uri", tracking, env=FAST)
    os.kill(next(pid for pid in _two_running(storage, "lostworker") if pid != proc.pid), signal.SIGKILL)  # a spawned worker
    _fast_rest(tmp_path, "lostworker")  # the trials after the kill (the retry among them) need no time to inject a fault
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-2000:]
    assert "killed by SIGKILL" in err and "Traceback" not in err
    study = assert_stores_agree(storage, tracking, "lostworker", target=8)
    killed = next(t for t in study.trials if t.state.name == "FAIL")
    assert any(t.user_attrs.get(keys.RETRY_OF) == killed.number for t in study.trials)


class _DroppingProxy:
    """A TCP proxy to ``upstream`` that can drop every connection and refuse new ones for a while."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream, self.down_until, self.socks = upstream, 0.0, []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.server.accept()
            if time.monotonic() < self.down_until:
                client.close()
                continue
            upstream = socket.create_connection(self.upstream)
            self.socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                b.sendall(data)
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def drop_for(self, seconds: float) -> None:
        self.down_until = time.monotonic() + seconds
        socks, self.socks = self.socks, []
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
                s.close()


@pytest.mark.postgres
def test_a_postgresql_outage_mid_study_is_waited_out(tmp_path, postgres_url, unique_name) -> None:
    from sqlalchemy.engine import make_url

    url = make_url(postgres_url)
    proxy = _DroppingProxy((url.host or "127.0.0.1", url.port or 5432))
    storage = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = _study(tmp_path, unique_name, 3, sleep_s=0.02)
    proc = autolr_process("tune", path, "--storage", storage, "--tracking-uri", tracking)
    try:
        wait_for(lambda: any(t.state.name == "COMPLETE" for t in _trials(postgres_url, unique_name)), timeout_s=120, what="a finished trial")
        proxy.drop_for(9.0)
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
        assert "retrying for up to" in err and "Traceback" not in err
        assert_stores_agree(postgres_url, tracking, unique_name, target=3)
    finally:
        proc.kill()
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=unique_name, storage=postgres_url)


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 2 MiB tmpfs (needs the right to mount, e.g. root); skipped where there is none."""
    where = tmp_path / "disk"
    where.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root?)")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_disk_stops_the_study_in_one_line_and_the_stores_agree(tmp_path, tiny_disk) -> None:
    storage, tracking = f"sqlite:///{tiny_disk / 'optuna.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = _study(tmp_path, "fulldisk", 3, sleep_s=0.1)
    args = ["tune", path, "--storage", storage, "--tracking-uri", tracking]
    proc = autolr_process(*args, env=FAST)
    # filled while the first trial trains: until a trial ends nothing checkpoints SQLite's -wal, so every
    # write from here needs new space (after a checkpoint the -wal reuses its own, and a study may finish
    # within it: nothing lost, no error to see)
    wait_for(lambda: _training(storage, "fulldisk"), timeout_s=120, what="a trial training")
    with contextlib.suppress(OSError), open(tiny_disk / "filler", "wb") as f:  # noqa: PTH123
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("autolr: error")]
    assert len(lines) == 1 and "is full" in lines[0] and str(tiny_disk) in lines[0], err[-2000:]
    assert "Should not reach" not in err and "Traceback" not in err
    stored = {t.number: t.state.name for t in _trials(storage, "fulldisk")}
    client = MlflowClient(tracking)
    for run in client.search_runs([client.get_experiment_by_name("fulldisk").experiment_id]):
        if run.data.tags.get(keys.STATE) == "COMPLETE":
            assert stored[int(run.data.tags[keys.TRIAL])] == "COMPLETE"
    (tiny_disk / "filler").unlink()
    _fast_rest(tmp_path, "fulldisk")
    assert run_autolr(*args, env=FAST).returncode == 0
    assert_stores_agree(storage, tracking, "fulldisk", target=3)


def test_the_ui_server_dies_with_a_killed_autolr_ui(tmp_path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = autolr_process("ui", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--port", str(port))

    def serving() -> bool:
        with contextlib.suppress(OSError):
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200
        return False

    try:
        wait_for(serving, timeout_s=120, what="the UI to answer")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

        def port_free() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) != 0

        wait_for(port_free, timeout_s=15, what="the UI's port to be free")
    finally:
        proc.kill()
