"""MLflow tracking: every point comes back with its step, runs always end, a tuned study's layout."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import time

import optuna
import pytest
from mlflow.tracking import MlflowClient

import autolr
from autolr import keys
from autolr.keys import UID as UID_ATTR
from autolr.report import STUDY_PLOTS
from autolr.tracking import Tracker

STEPS = 103  # not a multiple of the window: the last window is short


@pytest.fixture(params=[("process", True), ("thread", True), ("process", False)], ids=["process", "thread", "public-log-batch"])
def tracker(request, stores):
    writer, fast_path = request.param
    tracker = Tracker(stores["tracking_uri"], experiment="points", writer=writer, fast_path=fast_path)
    yield tracker
    tracker.close()


def _log_trial(tracker: Tracker, parent_run_id: str | None, number: int = 0):
    """A fake trial: windows of 4 steps, layer stats every 10 steps, validation every 25 steps."""
    run = tracker.trial_run(parent_run_id, number, {"lr": 0.1, "optimizer": "sgd"})
    with run:
        for first in range(0, STEPS, 4):
            window = range(first, min(first + 4, STEPS))
            run.log_steps(first, {"train_loss": [1.0 / (s + 1) for s in window], "lr": [0.1] * len(window), "grad_norm": [1.0] * len(window)})
            for step in window:
                if step % 10 == 0:
                    run.log_metrics(step, {"weight_grad_norm.0.weight": 0.5, "weight_norm.0.weight": 3.0, "weight_update_ratio.0.weight": 1e-3})
                if (step + 1) % 25 == 0:  # an epoch end
                    run.log_metrics((step + 1) // 25, {"val_loss": 0.5})
                    run.flush()
        run.end("COMPLETE", {"autolr.value": 0.5})
    return run


def test_every_point_logged_is_retrievable_with_its_step(tracker) -> None:
    with tracker.parent_run("parent", params={"study": "points"}, tags={}) as parent:
        run = _log_trial(tracker, parent)
    client = MlflowClient(tracker.tracking_uri)
    for key in ("train_loss", "lr", "grad_norm"):
        history = client.get_metric_history(run.run_id, key)
        assert sorted(m.step for m in history) == list(range(STEPS)), key
    loss = {m.step: m.value for m in client.get_metric_history(run.run_id, "train_loss")}
    assert loss[0] == 1.0 and loss[STEPS - 1] == pytest.approx(1.0 / STEPS)
    assert sorted(m.step for m in client.get_metric_history(run.run_id, "weight_grad_norm.0.weight")) == list(range(0, STEPS, 10))
    assert len(client.get_metric_history(run.run_id, "val_loss")) == 4
    info = client.get_run(run.run_id)
    assert info.info.status == "FINISHED"
    assert info.data.tags["autolr.state"] == "COMPLETE" and info.data.tags["autolr.gradients"] == "healthy"
    assert info.data.metrics["train_loss"] == pytest.approx(1.0 / STEPS)  # the latest point, as MLflow keeps it
    assert info.data.params == {"lr": "0.1", "optimizer": "sgd"}


def test_non_finite_points_are_kept(stores) -> None:
    tracker = Tracker(stores["tracking_uri"], experiment="nan")
    try:
        run = tracker.trial_run(None, 0, {})
        run.log_steps(0, {"train_loss": [1.0, math.inf, math.nan], "lr": [0.1] * 3, "grad_norm": [1.0, 2.0, math.nan]})
        run.end("PRUNED", {"autolr.prune_reason": "diverged: loss nan at step 2", "autolr.divergence_step": 2})
        assert tracker.flush()
        client = MlflowClient(stores["tracking_uri"])
        values = [m.value for m in sorted(client.get_metric_history(run.run_id, "train_loss"), key=lambda m: m.step)]
        assert values[0] == 1.0 and values[1] > 1e300 and math.isnan(values[2])
        tags = client.get_run(run.run_id).data.tags
        assert tags["autolr.state"] == "PRUNED" and tags["autolr.divergence_step"] == "2"
        assert tags["autolr.exploding_step"] == "2" and tags["autolr.gradients"].startswith("exploding")
    finally:
        tracker.close()


def test_a_trial_run_always_ends_in_a_final_state(stores) -> None:
    cases = [(None, "FINISHED", "COMPLETE"), (ValueError("boom"), "FAILED", "FAIL"), (KeyboardInterrupt(), "KILLED", "FAIL")]
    tracker = Tracker(stores["tracking_uri"], experiment="states")
    try:
        runs = []
        for number, (raised, _, _) in enumerate(cases):
            run = tracker.trial_run(None, number, {})
            try:
                with run:
                    run.log_steps(0, {"train_loss": [1.0], "lr": [0.1], "grad_norm": [1.0]})
                    if raised is not None:
                        raise raised
            except (ValueError, KeyboardInterrupt) as exc:
                assert exc is raised
            runs.append(run)
        assert tracker.flush()
        client = MlflowClient(stores["tracking_uri"])
        for run, (_, status, state) in zip(runs, cases):
            info = client.get_run(run.run_id)
            assert (info.info.status, info.data.tags["autolr.state"]) == (status, state)
        assert client.get_run(runs[1].run_id).data.tags["autolr.error"] == "ValueError: boom"
    finally:
        tracker.close()


def test_runs_end_killed_when_the_training_process_dies(stores, tmp_path) -> None:
    script = textwrap.dedent(
        f"""
        import os
        from autolr.tracking import Tracker
        tracker = Tracker({stores["tracking_uri"]!r}, experiment="dies")
        run = tracker.trial_run(None, 0, {{"lr": 0.1}})
        run.log_steps(0, {{"train_loss": [1.0, 0.9], "lr": [0.1, 0.1], "grad_norm": [1.0, 1.0]}})
        run.flush()
        tracker.flush()
        print(run.run_id, flush=True)
        os._exit(3)  # no end, no close, no atexit: as if killed
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 3, done.stderr
    run_id = done.stdout.strip().splitlines()[-1]
    client = MlflowClient(stores["tracking_uri"])
    deadline = time.monotonic() + 60
    while client.get_run(run_id).info.status == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.2)
    run = client.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["autolr.state"] == "FAIL"
    assert len(client.get_metric_history(run_id, "train_loss")) == 2


STUDY = """
    name: {name}
    task: {task}
    train: {{epochs: 2, batch_size: 256}}
    objective: {{metric: val_loss, direction: minimize}}
    trials: {trials}
    seed: 0
    sampler: random
    search:
      lr: {{low: 1.0e-3, high: {high}}}
      optimizer: {{adam: {{}}, sgd: {{momentum: 0.9}}}}
      schedule: {{constant: {{}}, cosine: {{}}}}
    pruning: {{divergence: true, curve: none}}
    tracking: {{layer_stats_every: 5}}
"""


def _runs(tracking_uri: str, experiment: str):
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("autolr.role") == "study"]
    trials = [r for r in runs if r.data.tags.get("autolr.role") == "trial"]
    return client, parents, trials


def test_tuned_study_holds_plots_best_config_and_curves(write_study, stores, plots) -> None:
    path = write_study(STUDY.format(name="layout", task="digits_mlp", trials=4, high=30.0))
    result = autolr.tune(path, storage=stores["storage"], tracking_uri=stores["tracking_uri"])
    assert "autolr study `layout`" in _runs(stores["tracking_uri"], "layout")[1][0].data.tags["mlflow.note.content"]  # at once
    assert result.wait_for_plots()  # the plots are drawn after tune() returns, in a process of their own
    client, parents, trials = _runs(stores["tracking_uri"], "layout")
    (parent,) = parents
    assert len(trials) == 4 and all(r.info.status != "RUNNING" for r in [parent, *trials])
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert artifacts == {f"plots/{name}" for name in STUDY_PLOTS}
    assert "best_config.yaml" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "autolr study `layout`" in parent.data.tags["mlflow.note.content"]
    assert f"Exported (`best_config.yaml`): trial {parent.data.tags['autolr.best_trial']}" in parent.data.tags["mlflow.note.content"]  # what best.* holds
    assert parent.data.params["best.lr"] == repr(result.best.user_attrs["autolr.params"]["lr"])
    complete = [t for t in result.trials if t.state.name == "COMPLETE"]
    assert complete and all(t.user_attrs["autolr.loss_ratio"] > 0 for t in complete)  # where training ended / began
    for run in trials:
        assert {a.path for a in client.list_artifacts(run.info.run_id, "plots")} == {"plots/curves.png"}
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "lr")]
        assert steps == sorted(steps) and steps == list(range(len(steps))) and steps
        assert {"lr", "optimizer", "schedule", "warmup"} <= set(run.data.params)
        layer = [m.step for m in client.get_metric_history(run.info.run_id, "weight_grad_norm.0.weight")]
        assert layer == [s for s in steps if s % 5 == 0]


def test_two_storages_with_one_study_name_never_mix_runs(write_study, stores, tmp_path) -> None:
    """One MLflow experiment per study name, so the runs carry their Optuna study's id and are read back by it."""
    path = write_study(STUDY.format(name="twin", task="digits_mlp", trials=2, high=1.0))
    uids = []
    for storage in (stores["storage"], f"sqlite:///{tmp_path / 'other.db'}"):
        autolr.tune(path, storage=storage, tracking_uri=stores["tracking_uri"])
        uids.append(optuna.load_study(study_name="twin", storage=storage).user_attrs[UID_ATTR])
    assert uids[0] != uids[1]
    _, parents, trials = _runs(stores["tracking_uri"], "twin")
    assert sorted(r.data.tags[keys.STUDY_UID] for r in parents) == sorted(uids)
    for uid in uids:
        tracker = Tracker(stores["tracking_uri"], experiment="twin")
        tracker.study_uid = uid
        own = {r.info.run_id for r in trials if r.data.tags[keys.STUDY_UID] == uid}
        assert len(own) == 2 and set(tracker.trial_runs().values()) == own


KEYBOARD_TASK = """
import torch
from autolr.tasks import digits_mlp

calls = 0

def factory(**kwargs):
    task = digits_mlp(hidden=16)
    loss_fn = task.loss_fn

    def interrupting_loss(outputs, targets):
        global calls
        if torch.is_grad_enabled():  # training steps only
            calls += 1
            if calls == 30:  # mid-way through the third trial (12 steps each)
                raise KeyboardInterrupt
        return loss_fn(outputs, targets)

    task.loss_fn = interrupting_loss
    return task
"""


def test_keyboard_interrupt_mid_trial_leaves_nothing_running(write_study, stores, tmp_path, monkeypatch) -> None:
    (tmp_path / "kbtask.py").write_text(KEYBOARD_TASK)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "kbtask", raising=False)
    path = write_study(STUDY.format(name="interrupted", task="kbtask:factory", trials=5, high=1.0e-2))
    with pytest.raises(KeyboardInterrupt):
        autolr.tune(path, storage=stores["storage"], tracking_uri=stores["tracking_uri"])
    client, (parent,), trials = _runs(stores["tracking_uri"], "interrupted")
    states = sorted((int(r.data.tags["autolr.trial"]), r.info.status, r.data.tags["autolr.state"]) for r in trials)
    assert states == [(0, "FINISHED", "COMPLETE"), (1, "FINISHED", "COMPLETE"), (2, "KILLED", "FAIL")]
    assert parent.info.status == "KILLED"
    killed = next(r for r in trials if r.info.status == "KILLED")
    assert 0 < len(client.get_metric_history(killed.info.run_id, "train_loss")) < 12


def test_spooled_points_are_claimed_by_one_writer_only(tmp_path, monkeypatch) -> None:
    """Unsent entries kept on disk go to exactly one of several writers starting together (``--jobs``),
    and back to the next one if their claimant dies."""
    from autolr.tracking._messages import RunBatch
    from autolr.tracking._spool import Spool as _Spool

    monkeypatch.setenv("AUTOLR_SPOOL_DIR", str(tmp_path))
    entry = RunBatch("r1", points=[("train_loss", 1.0, 0, 0)])
    saved = _Spool("http://example:5000").save({0: entry})
    first, second = _Spool("http://example:5000"), _Spool("http://example:5000")
    assert first.pending() and [e for _, e in first.load()] == [entry]
    assert not second.pending() and second.load() == []
    (claimed,) = first.files
    dead = claimed.with_name(claimed.name.replace(f".{os.getpid()}.", ".999999999."))  # a pid no process has
    claimed.rename(dead)
    third = _Spool("http://example:5000")
    assert [e for _, e in third.load()] == [entry]
    (key,) = third.files[next(iter(third.files))]
    third.done(key)
    assert not list(tmp_path.rglob("*")) or all(p.is_dir() for p in tmp_path.rglob("*"))
    assert not saved.exists() and _Spool("http://other:5000").load() == []


def test_training_process_dying_while_the_store_is_down_keeps_its_points(tmp_path) -> None:
    """No server at the URI and the training process killed mid-trial: the writer still ends the run
    KILLED and keeps it, with its points, in the spool folder for the next writer."""
    import pickle
    import socket

    from autolr.tracking._spool import SPOOL_VERSION

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    script = textwrap.dedent(
        f"""
        import os
        from autolr.tracking import Tracker
        tracker = Tracker("http://127.0.0.1:{port}", experiment="gone")
        tracker._experiment_id = "1"  # no server to ask
        for number in (0, 1):
            run = tracker.trial_run(None, number, {{"lr": 0.1}})
            run.log_steps(0, {{"train_loss": [1.0, 0.9], "lr": [0.1, 0.1], "grad_norm": [1.0, 1.0]}})
            run.flush()
        tracker.flush()
        os._exit(3)  # no end, no close: as if killed
        """
    )
    env = {**os.environ, "AUTOLR_SPOOL_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env, check=False)
    assert done.returncode == 3, done.stderr
    deadline = time.monotonic() + 90
    while not list(tmp_path.glob("*/*.pkl")) and time.monotonic() < deadline:
        time.sleep(0.2)
    (path,) = tmp_path.glob("*/*.pkl")
    entries = pickle.loads(path.read_bytes())
    assert sorted(e["new_run"]["run_name"] for e in entries) == ["trial-0", "trial-1"]
    for e in entries:
        assert e["version"] == SPOOL_VERSION and e["end"]["status"] == "KILLED" and e["tags"]["autolr.state"] == "FAIL"
        assert sorted((p[0], p[3]) for p in e["points"]) == sorted((k, s) for k in ("train_loss", "lr", "grad_norm") for s in (0, 1))


class _CountingTracker:
    """Stands in for a Tracker: counts the messages a trial run hands over."""

    def __init__(self) -> None:
        self.sent: list = []

    def _send(self, msg) -> None:
        self.sent.append(msg)


class _NoOptunaTrial:
    number = 0
    user_attrs: dict = {}

    def report(self, value, step) -> None: ...

    def should_prune(self) -> bool:
        return False


def test_points_leave_at_the_last_epochs_start_and_last_step_not_at_every_epoch_end(monkeypatch) -> None:
    """A trial of 5 epochs x 8 steps in windows of 4, faster than the flush interval: its points are
    handed over twice before the end (the last epoch's first step, the last step), epoch ends send
    nothing of their own, and the end hands over the last validation's metrics."""
    from autolr.tracking import _trial_run
    from autolr.tracking._messages import EndRun, LogPoints
    from autolr.tracking._trial_run import TrialRun
    from autolr.trial import TrialReport

    monkeypatch.setattr(_trial_run, "FLUSH_INTERVAL_S", 3600.0)
    tracker = _CountingTracker()
    run = TrialRun(tracker, 1)
    report = TrialReport(_NoOptunaTrial(), run, "val_loss", curve_pruning=False)
    report.on_train_start(total_steps=40, steps_per_epoch=8)
    handed_over_at = []
    for epoch in range(1, 6):
        for first in range((epoch - 1) * 8, epoch * 8, 4):
            report.on_steps(first, {"train_loss": [0.5] * 4, "lr": [0.1] * 4, "grad_norm": [1.0] * 4})
            if tracker.sent:
                handed_over_at.append(first + 4)
                tracker.sent.clear()
        report.on_epoch_end(epoch, epoch * 8, {"val_loss": 0.5})
        assert not tracker.sent, f"epoch {epoch}'s end handed points over"
    assert handed_over_at == [32, 40]  # the window reaching the last epoch's first step (32), the last step
    run.end("COMPLETE")
    last, end = tracker.sent
    assert isinstance(last, LogPoints) and last.points == 1 and isinstance(end, EndRun)


def test_points_leave_once_the_flush_interval_has_passed(monkeypatch) -> None:
    from autolr.tracking import _trial_run
    from autolr.tracking._trial_run import TrialRun

    clock = iter(float(t) for t in range(100))
    monkeypatch.setattr(_trial_run.time, "monotonic", lambda: next(clock) * _trial_run.FLUSH_INTERVAL_S * 0.6)
    tracker = _CountingTracker()
    run = TrialRun(tracker, 1)  # created at t=0
    run.log_metrics(0, {"val_loss": 1.0})  # t=0.6 intervals: kept
    assert not tracker.sent
    run.log_steps(0, {"train_loss": [1.0]})  # t=1.2 intervals: both points leave together
    assert len(tracker.sent) == 1 and tracker.sent[0].points == 2


def test_a_runs_params_tags_series_and_description_arrive_in_as_few_batches_as_mlflows_limits_allow(stores, monkeypatch) -> None:
    """``Tracker.log_run``: one ``log_batch`` where MLflow takes it all (what a parent run's end writes),
    split only at MLflow's limits (1000 entities, 100 params, 100 tags a call), nothing left out."""
    from mlflow.tracking import MlflowClient as Client

    tracker = Tracker(stores["tracking_uri"], experiment="batches", writer="thread")
    calls = []
    real = Client.log_batch
    monkeypatch.setattr(Client, "log_batch", lambda self, run_id, **kw: calls.append({k: len(v or ()) for k, v in kw.items()}) or real(self, run_id, **kw))
    with tracker.parent_run("p", params={}, tags={}) as run_id:
        calls.clear()
        tracker.log_run(
            run_id,
            params={"best.lr": 0.1},
            tags={"autolr.best_trial": 3},
            series={"study/objective": [(0, 1.0), (1, math.inf), (2, 0.5)]},
            description="**hi**",
        )
        assert calls == [{"metrics": 2, "params": 1, "tags": 2}]
        calls.clear()
        params = {f"p{i}": i for i in range(150)}
        tags = {f"t{i}": i for i in range(250)}
        series = {"s": [(i, float(i)) for i in range(2500)]}
        tracker.log_run(run_id, params=params, tags=tags, series=series)
        assert all(c["params"] <= 100 and c["tags"] <= 100 and sum(c.values()) <= 1000 for c in calls) and len(calls) == 3  # 2,900 entities
    tracker.close()
    client = MlflowClient(stores["tracking_uri"])
    run = client.get_run(run_id)
    assert {k: v for k, v in run.data.params.items() if k.startswith("p")} == {k: str(v) for k, v in params.items()}
    assert {f"t{i}" for i in range(250)} <= set(run.data.tags) and run.data.tags["mlflow.note.content"] == "**hi**"
    assert [m.step for m in client.get_metric_history(run_id, "s")] == list(range(2500))
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "study/objective")] == [(0, 1.0), (2, 0.5)]


def test_the_trials_view_is_set_as_the_study_starts_and_not_written_again(write_study, stores, monkeypatch) -> None:
    """The experiment's trials view is there while the trials run (not only at the end), and a
    resumed study whose experiment shows it already writes nothing; the parent run's best
    configuration lands in its own artifact folder (located from the created run, not read back)."""
    from mlflow.tracking import MlflowClient as Client

    path = write_study(STUDY.format(name="view", task="digits_mlp", trials=2, high=30.0))
    writes, seen = [], []
    real = Client.set_experiment_tag
    monkeypatch.setattr(Client, "set_experiment_tag", lambda self, *a: writes.append(a[1]) or real(self, *a))

    def on_trial(trial) -> None:
        exp = MlflowClient(stores["tracking_uri"]).get_experiment_by_name("view")
        seen.append(keys.TRIALS_VIEW_TAG in exp.tags)

    autolr.tune(path, storage=stores["storage"], tracking_uri=stores["tracking_uri"], on_trial=on_trial, trials=2)
    assert seen == [True, True] and writes.count(keys.TRIALS_VIEW_TAG) == 1
    view = json.loads(MlflowClient(stores["tracking_uri"]).get_experiment_by_name("view").tags[keys.TRIALS_VIEW_TAG])
    assert {"tags.`autolr.role`", "tags.`autolr.source`", "params.`lr`"} <= set(view["selectedColumns"])  # a sweep trial told apart
    autolr.tune(path, storage=stores["storage"], tracking_uri=stores["tracking_uri"], trials=3)
    assert writes.count(keys.TRIALS_VIEW_TAG) == 1
    client, parents, _ = _runs(stores["tracking_uri"], "view")
    for parent in parents:
        assert "best_config.yaml" in {a.path for a in client.list_artifacts(parent.info.run_id)}
        local = client.download_artifacts(parent.info.run_id, "best_config.yaml")
        assert "study: view" in open(local).read()


def test_the_best_configuration_is_recorded_even_where_the_study_cannot_be_described(write_study, stores, monkeypatch) -> None:
    from autolr import report

    def broken(*args, **kwargs):
        raise ValueError("an odd stored attr")

    monkeypatch.setattr(report, "study_record", broken)
    path = write_study(STUDY.format(name="nodesc", task="digits_mlp", trials=2, high=30.0))
    result = autolr.tune(path, storage=stores["storage"], tracking_uri=stores["tracking_uri"])
    client, (parent,), _ = _runs(stores["tracking_uri"], "nodesc")
    assert parent.data.params["best.lr"] == repr(result.best.user_attrs["autolr.params"]["lr"]) and keys.BEST_TRIAL in parent.data.tags
    assert "best_config.yaml" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "autolr study `nodesc`" in parent.data.tags["mlflow.note.content"]  # the description the run started with


def test_the_python_api_prints_nothing_of_mlflow_setting_up_its_store(tmp_path) -> None:
    """A notebook's ``autolr.tune`` on a new MLflow store: no "Creating initial MLflow database tables" INFO lines."""
    (tmp_path / "s.yaml").write_text(
        "name: api-quiet\ntask: least_squares\ntrials: 1\ntrain: {epochs: 1}\nconfirm: false\nsearch: {lr: {low: 0.001, high: 0.1}}\n"
    )
    code = "import autolr\nautolr.tune('s.yaml', progress=False)\n"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "database tables" not in proc.stdout + proc.stderr, proc.stderr[-2000:]
    assert (tmp_path / "mlruns" / "mlflow.db").exists()


def test_the_exported_runs_are_tagged_and_an_earlier_exports_are_not(tmp_path) -> None:
    """``autolr.exported`` marks the runs of what the export names (a search trial's run and its
    confirmation runs, or a step back's runs) and moves when a resumed study exports another."""
    from autolr.tracking._exported import mark_exported

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("marked")
    done, ours = {keys.STATE: "COMPLETE", keys.STUDY_UID: "ours"}, {keys.STUDY_UID: "ours"}
    runs = {
        "trial-1": {keys.ROLE: keys.ROLE_TRIAL, keys.TRIAL: "1", **done},
        "trial-2": {keys.ROLE: keys.ROLE_TRIAL, keys.TRIAL: "2", **done},
        "confirm-1-seed1000": {keys.ROLE: keys.ROLE_CONFIRM, keys.TRIAL: "0", keys.CONFIRM_OF: "1", **done},
        "confirm-1-seed2000-killed": {keys.ROLE: keys.ROLE_CONFIRM, keys.CONFIRM_OF: "1", keys.STATE: "KILLED", **ours},
        "confirm-1-lr0.49x-seed1000": {keys.ROLE: keys.ROLE_CONFIRM, keys.TRIAL: "2", keys.CONFIRM_OF: "1", keys.LR_SCALE: "0.48999999999999994", **done},
        "study": {keys.ROLE: keys.ROLE_STUDY, **ours},
        "other-study-trial-1": {keys.ROLE: keys.ROLE_TRIAL, keys.TRIAL: "1", keys.STATE: "COMPLETE", keys.STUDY_UID: "theirs", keys.EXPORTED: "true"},
    }
    ids = {name: client.create_run(experiment, tags=tags, run_name=name).info.run_id for name, tags in runs.items()}

    def marked() -> list[str]:
        return sorted(r.info.run_name for r in client.search_runs([experiment], f"tags.`{keys.EXPORTED}` = 'true'") if r.info.run_name != "other-study-trial-1")

    mark_exported(client, experiment, 1, study_uid="ours")
    assert marked() == ["confirm-1-seed1000", "trial-1"]  # not trial 2, its killed run, its step back's run numbered 2, nor the other study's
    mark_exported(client, experiment, 1, 0.49, study_uid="ours")
    assert marked() == ["confirm-1-lr0.49x-seed1000"]  # a step back trained at another rate than trial 1 itself
    mark_exported(client, experiment, 2, study_uid="ours")
    assert marked() == ["trial-2"]
    mark_exported(client, experiment, None, study_uid="ours")
    assert marked() == [] and keys.EXPORTED not in client.get_run(ids["trial-2"]).data.tags
    assert client.get_run(ids["other-study-trial-1"]).data.tags[keys.EXPORTED] == "true"  # the same name in another storage: not ours to move
