"""The study runner under the failures users meet: raising trials, Ctrl-C, killed workers, several
processes on one storage (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from autolr import store
from autolr.cli import main
from tests.faultkit import running_trial, wait_for

FLAKY_TASK = '''
import os, time
from autolr.tasks import digits_mlp

def make(counter, fail_calls=(), interrupt_calls=(), sleep_s=0.0):
    """Call n (0 is autolr's pre-flight build) fails or gets Ctrl-C at its 5th step, as asked."""
    with open(counter, "a") as f:
        f.write("x")
    n = os.path.getsize(counter) - 1
    if n in fail_calls:
        raise RuntimeError(f"injected failure in call {n}")
    task = digits_mlp(hidden=8)
    loss = task.loss_fn
    calls = [0]
    def loss_fn(out, y):
        calls[0] += 1
        if n in interrupt_calls and calls[0] == 5:
            raise KeyboardInterrupt
        if sleep_s:
            time.sleep(sleep_s)
        return loss(out, y)
    task.loss_fn = loss_fn
    return task
'''


def _study(write_study, tmp_path: Path, name: str, trials: int = 4, extra: str = "", **task_args) -> str:
    (tmp_path / "flaky_task.py").write_text(FLAKY_TASK)
    args = ", ".join(f"{k}: {v!r}" for k, v in {"counter": str(tmp_path / f"{name}.count"), **task_args}.items())
    return str(
        write_study(
            f"""
        name: {name}
        task: "flaky_task:make"
        task_args: {{{args}}}
        train: {{epochs: 2, batch_size: 256}}
        trials: {trials}
        search: {{lr: {{low: 0.001, high: 0.1}}, optimizer: {{sgd: {{}}}}, schedule: {{constant: {{}}}}}}
        pruning: {{curve: none}}
        {extra}
    """,
            f"{name}.yaml",
        )
    )


def _runs_by_trial(tracking_uri: str, experiment: str):
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    trials = {int(r.data.tags["autolr.trial"]): r for r in runs if "autolr.trial" in r.data.tags}
    parents = [r for r in runs if r.data.tags.get("autolr.role") == "study"]
    return trials, parents


def _args(stores):
    return ["--storage", stores["storage"], "--tracking-uri", stores["tracking_uri"]]


def test_a_raising_trial_is_fail_and_the_study_goes_on(write_study, tmp_path, stores) -> None:
    path = _study(write_study, tmp_path, "flaky", trials=3, fail_calls=[2])
    assert main(["tune", path, *_args(stores)]) == 0
    study = optuna.load_study(study_name="flaky", storage=stores["storage"])
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert study.trials[1].user_attrs["autolr.error"] == "RuntimeError: injected failure in call 2"
    runs, _ = _runs_by_trial(stores["tracking_uri"], "flaky")
    assert runs[1].info.status == "FAILED" and runs[1].data.tags["autolr.state"] == "FAIL"
    assert "injected failure" in runs[1].data.tags["autolr.error"]


def test_trials_failing_in_a_row_stop_the_study_with_the_cause(write_study, tmp_path, stores, capsys) -> None:
    path = _study(write_study, tmp_path, "broken", trials=5, fail_calls=list(range(1, 10)))
    assert main(["tune", path, *_args(stores)]) == 1
    err = capsys.readouterr().err
    assert "3 trials in a row failed; last: RuntimeError: injected failure in call 3" in err
    _, parents = _runs_by_trial(stores["tracking_uri"], "broken")
    assert [p.info.status for p in parents] == ["FAILED"]


def test_ctrl_c_keeps_what_finished_closes_runs_and_a_rerun_resumes(write_study, tmp_path, stores, capsys) -> None:
    path = _study(write_study, tmp_path, "interrupted", trials=4, interrupt_calls=[3])
    assert main(["tune", path, *_args(stores)]) == 130
    assert "re-run the same command to resume" in capsys.readouterr().err
    study = optuna.load_study(study_name="interrupted", storage=stores["storage"])
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "FAIL", "WAITING"]  # its configuration queued again
    runs, parents = _runs_by_trial(stores["tracking_uri"], "interrupted")
    assert runs[2].info.status == "KILLED" and runs[2].data.tags["autolr.state"] == "FAIL"  # as in Optuna
    assert [p.info.status for p in parents] == ["KILLED"]
    assert len(MlflowClient(stores["tracking_uri"]).get_metric_history(runs[2].info.run_id, "train_loss")) == 4  # not lost

    assert main(["tune", path, *_args(stores)]) == 0  # the counter moved on: no more interrupts
    study = optuna.load_study(study_name="interrupted", storage=stores["storage"])
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == 4
    retry = study.trials[3]  # the interrupted configuration ran first, once
    assert retry.user_attrs["autolr.retry_of"] == 2 and retry.params == study.trials[2].params and retry.state.name == "COMPLETE"
    assert not any("autolr.retry_of" in t.user_attrs for t in study.trials[4:])
    runs, parents = _runs_by_trial(stores["tracking_uri"], "interrupted")
    assert all(r.info.status != "RUNNING" for r in [*runs.values(), *parents])


def test_an_interrupted_retry_runs_again_and_a_grid_runs_its_last_points_retry(write_study, tmp_path, stores, capsys) -> None:
    """Ctrl-C in the grid's last point, and again in its retry: each interrupted configuration is
    queued again (a second Ctrl-C is the user's, not the configuration's), and the grid, all of whose
    points Optuna counts as visited once one failed, still runs the queued one."""
    path = _study(write_study, tmp_path, "gridstop", trials=3, extra="sampler: grid\n        confirm: false", interrupt_calls=[3, 5])
    args = ["--storage", stores["storage"], "--no-tracking"]  # what is checked is in Optuna
    assert main(["tune", path, *args]) == 130  # call 3 (0 is the pre-flight's): trial 2, the grid's last point
    assert main(["tune", path, *args]) == 130  # call 5: its retry, trial 3
    assert main(["tune", path, *args]) == 0
    trials = optuna.load_study(study_name="gridstop", storage=stores["storage"]).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "FAIL", "FAIL", "COMPLETE"]
    assert [t.user_attrs.get("autolr.retry_of") for t in trials] == [None, None, None, 2, 3] and trials[4].params == trials[2].params
    capsys.readouterr()
    assert main(["show", path, "--storage", stores["storage"], "--top", "9"]) == 0
    assert "retry of 3" in capsys.readouterr().out


def _tune_subprocess(path: str, stores, env_extra: dict, *extra: str) -> subprocess.Popen:
    env = {**os.environ, **env_extra, "PYTHONPATH": os.pathsep.join(sys.path)}
    code = "import sys; from autolr.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-c", code, "tune", path, *_args(stores), *extra], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip


def test_a_killed_worker_loses_only_its_trial_and_its_runs_get_closed(write_study, tmp_path, stores, monkeypatch) -> None:
    path = _study(write_study, tmp_path, "killed", trials=3, sleep_s=0.05)
    proc = _tune_subprocess(path, stores, {"AUTOLR_HEARTBEAT_S": "1", "AUTOLR_GRACE_S": "2"})

    try:
        wait_for(lambda: running_trial(stores["storage"], "killed"), what="a running trial")
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    time.sleep(2.5)  # the dead worker's heartbeat goes stale
    monkeypatch.setattr(store, "HEARTBEAT_S", 1)
    monkeypatch.setattr(store, "GRACE_S", 2)
    (tmp_path / "killed.count").write_text("x" * 50)  # no sleeping in the rerun
    assert main(["tune", path, *_args(stores)]) == 0
    study = optuna.load_study(study_name="killed", storage=stores["storage"])
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 3 and states.count("FAIL") == 1 and "RUNNING" not in states
    runs, parents = _runs_by_trial(stores["tracking_uri"], "killed")
    assert all(r.info.status != "RUNNING" for r in [*runs.values(), *parents])
    dead = next(t.number for t in study.trials if t.state.name == "FAIL")
    assert runs[dead].info.status == "KILLED"


def test_several_processes_on_default_sqlite_lose_no_trial(write_study, tmp_path, stores) -> None:
    path = _study(write_study, tmp_path, "parallel", trials=8)
    assert main(["tune", path, "--jobs", "2", *_args(stores)]) == 0
    study = optuna.load_study(study_name="parallel", storage=stores["storage"])
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 8 and "FAIL" not in states and "RUNNING" not in states  # claims are exact
    runs, parents = _runs_by_trial(stores["tracking_uri"], "parallel")
    assert sorted(runs) == [t.number for t in study.trials]
    assert len(parents) == 1 and {r.data.tags["mlflow.parentRunId"] for r in runs.values()} == {parents[0].info.run_id}


def test_two_invocations_at_once_share_the_sqlite_study(write_study, tmp_path, stores) -> None:
    path = _study(write_study, tmp_path, "twice", trials=10)
    procs = [_tune_subprocess(path, stores, {}) for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]
    study = optuna.load_study(study_name="twice", storage=stores["storage"])
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 10 and "FAIL" not in states


@pytest.mark.postgres
def test_workers_on_postgresql(write_study, tmp_path, postgres_url, unique_name) -> None:
    path = _study(write_study, tmp_path, unique_name, trials=6)
    stores = {"storage": postgres_url, "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    assert main(["tune", path, "--jobs", "2", *_args(stores)]) == 0
    study = optuna.load_study(study_name=unique_name, storage=postgres_url)
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 6 and "FAIL" not in states
    assert main(["export", path, "--storage", postgres_url]) == 0
    optuna.delete_study(study_name=unique_name, storage=postgres_url)


def test_a_resumed_grid_runs_each_point_once(write_study, tmp_path, stores, capsys) -> None:
    """Optuna numbers a grid's points in an order its seed shuffles: resumed with another seed, the
    stored indices named other points (a walkthrough's 8-point grid ran two twice and never two others);
    the order is the first invocation's, whatever --seed says later. Smaller than its target, the grid
    says so."""
    path = _study(write_study, tmp_path, "gridresume", trials=2, extra="sampler: grid\n        confirm: false")
    path_text = Path(path).read_text().replace("lr: {low: 0.001, high: 0.1}", "lr: {low: 0.0001, high: 1.0}")
    Path(path).write_text(path_text.replace("schedule: {constant: {}}", "schedule: {constant: {}, cosine: {}}"))
    args = ["--storage", stores["storage"], "--no-tracking"]  # what is checked is in Optuna
    assert main(["tune", path, *args]) == 0
    assert main(["tune", path, "--trials", "5", "--seed", "5", *args]) == 0  # a seed may change between invocations: not the grid's order
    assert main(["tune", path, "--trials", "10", *args]) == 0  # 5 decades x 2 schedules: the whole grid
    trials = optuna.load_study(study_name="gridresume", storage=stores["storage"]).trials
    points = [(t.params["lr"], t.params["schedule"]) for t in trials]
    assert len(points) == 10 and len(set(points)) == 10, points
    capsys.readouterr()
    assert main(["tune", path, "--trials", "12", *args]) == 0  # more than the grid has
    assert "study gridresume: 10 of 12 trials finished, every point of the grid; a larger target runs none" in capsys.readouterr().out


def test_two_invocations_starting_a_study_at_once_draw_apart(write_study, tmp_path, stores) -> None:
    """Two machines that start the same study file at the same moment both read 0 trials: seeded from
    that alone, their random start-up proposals were the same (a two-machine test's 6 trials were 3
    configurations, each trained twice). Each invocation takes the lowest free slot, under the claim
    lock; slot 0, one invocation alone, draws what a lone invocation always drew."""
    from autolr import keys, owner
    from autolr.claim import free_slot, take_slot
    from autolr.config import load_study
    from autolr.study import open_study

    config = load_study(_study(write_study, tmp_path, "together", extra="sampler: random"))
    url = stores["storage"]
    study = open_study(config, url)
    assert [take_slot(study, url) for _ in range(3)] == [0, 1, 2]  # three at once
    free_slot(study, url, 1)
    assert take_slot(study, url) == 1  # the lowest free one
    gone = subprocess.run([sys.executable, "-c", "import json; from autolr import owner; print(json.dumps(owner.this_process()))"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    study.set_user_attr(keys.INVOCATIONS, {"0": json.loads(gone.stdout)})  # a process of this machine that ended
    assert take_slot(study, url) == 0 and study.user_attrs[keys.INVOCATIONS] == {"0": owner.this_process()}

    lr = optuna.distributions.FloatDistribution(1e-3, 0.1, log=True)

    def proposals(sampler, study) -> list[float]:
        return [sampler.sample_independent(study, None, "lr", lr) for _ in range(4)]

    alone = open_study(config, url, invocation=0)  # as each machine opens it: no trial stored yet
    assert proposals(alone.sampler, alone) == proposals(optuna.samplers.RandomSampler(seed=config.seed), alone)  # as before slots
    second = open_study(config, url, invocation=1)
    assert not set(proposals(second.sampler, second)) & set(proposals(optuna.samplers.RandomSampler(seed=config.seed), second))


def test_tune_takes_a_free_slot_and_gives_it_back(write_study, tmp_path, stores) -> None:
    """Through autolr.tune: with slot 0 held by a live process elsewhere, the study's first trial is
    not the one a lone invocation draws; the slot is given back at the end."""
    from autolr import keys

    first_trials = []
    for name, elsewhere in (("alone", None), ("beside", {"machine": "another-machine", "pid": 1, "start": 1})):
        path = _study(write_study, tmp_path, name, trials=1, extra="sampler: random\n        confirm: false")
        if elsewhere is not None:
            from autolr.config import load_study
            from autolr.study import open_study

            open_study(load_study(path), stores["storage"]).set_user_attr(keys.INVOCATIONS, {"0": elsewhere})
        assert main(["tune", path, "--storage", stores["storage"], "--no-tracking"]) == 0
        study = optuna.load_study(study_name=name, storage=stores["storage"])
        first_trials.append(study.trials[0].params["lr"])
        assert study.user_attrs[keys.INVOCATIONS] == ({} if elsewhere is None else {"0": elsewhere})
    assert first_trials[0] != first_trials[1]
