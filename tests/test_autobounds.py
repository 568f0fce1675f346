"""``search.lr: auto`` and ``autolr find-lr``: bounds from the range test, cached, enqueued, logged."""

from __future__ import annotations

import dataclasses
import json

import optuna
import pytest
from mlflow.tracking import MlflowClient

import autolr
import autolr.autobounds as autobounds
from autolr.autobounds import lr_bounds_from
from autolr.cli import main
from autolr.finder import Probe, RangeTestResult
from autolr.keys import RANGE_TEST_CACHE as CACHE_ATTR

LEAST_SQUARES = """
name: {name}
task: least_squares
task_args: {{n_samples: 128, n_features: 10}}
train: {{epochs: 30, batch_size: 1000}}
trials: {trials}
seed: 0
search:
  lr: auto
  optimizer: {optimizers}
  schedule: {{constant: {{}}}}
pruning: {{divergence: true, curve: none}}
"""


def study_file(write_study, *, name="lsq-auto", trials=3, optimizers="{sgd: {momentum: 0.0}}"):
    return write_study(LEAST_SQUARES.format(name=name, trials=trials, optimizers=optimizers))


def range_test_runs(tracking_uri: str, experiment: str):
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return client, [r for r in runs if r.data.tags.get("autolr.role") == "range_test"], [r for r in runs if r.data.tags.get("autolr.role") == "study"]


def test_lr_auto_study_end_to_end(write_study, stores, monkeypatch):
    path = study_file(write_study)
    calls = []
    real = autobounds.range_test_for
    monkeypatch.setattr(autobounds, "range_test_for", lambda *a, **k: calls.append(a[1]) or real(*a, **k))

    result = autolr.tune(path, **stores)

    # the range test ran once, and its suggestion was the first trial
    assert calls == ["sgd"]
    study = optuna.load_study(study_name="lsq-auto", storage=stores["storage"])
    cached = study.user_attrs[CACHE_ATTR.format(optimizer="sgd")]
    test = RangeTestResult.from_dict(cached["result"])
    low, high = lr_bounds_from(test)
    first = study.trials[0]
    assert first.params == {"lr": pytest.approx(test.suggestion)}
    assert first.user_attrs["autolr.source"] == "range_test"
    assert all(low <= t.params["lr"] <= high for t in study.trials)
    # 2/L = 2 for this task: the bounds reach the limit and stop just above it
    assert 2.0 <= high <= 2.4 and low < test.suggestion < test.max_stable_lr

    # MLflow: one range-test run under the study's parent run, with its curve, plot and bounds
    client, tests, parents = range_test_runs(stores["tracking_uri"], "lsq-auto")
    assert len(tests) == 1 and len(parents) == 1
    run = tests[0]
    assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id == result.parent_run_id
    assert run.info.status == "FINISHED"
    assert float(run.data.params["lr_low"]) == pytest.approx(low)
    assert float(run.data.params["lr_high"]) == pytest.approx(high)
    assert float(run.data.params["max_stable_lr"]) == pytest.approx(test.max_stable_lr)
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in losses) == list(range(len(test.losses)))
    assert len(client.get_metric_history(run.info.run_id, "probe_lr")) == len(test.probes)
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["range_test_sgd.png"]

    # resumed: the cache answers, nothing is measured, logged or enqueued again
    autolr.tune(path, trials=5, **stores)
    assert calls == ["sgd"]
    _, tests, parents = range_test_runs(stores["tracking_uri"], "lsq-auto")
    assert len(tests) == 1 and len(parents) == 2
    study = optuna.load_study(study_name="lsq-auto", storage=stores["storage"])
    assert [t.user_attrs.get("autolr.source") for t in study.trials].count("range_test") == 1


def test_each_optimizer_gets_its_own_bounds_and_first_trial(write_study, stores):
    path = study_file(write_study, name="two-opts", trials=2, optimizers="{sgd: {momentum: 0.0}, adam: {}}")
    autolr.tune(path, storage=stores["storage"], tracking_uri=None)
    study = optuna.load_study(study_name="two-opts", storage=stores["storage"])
    enqueued = [t.params for t in study.trials if t.user_attrs.get("autolr.source") == "range_test"]
    assert [p["optimizer"] for p in enqueued] == ["sgd", "adam"]
    for params in enqueued:
        test = RangeTestResult.from_dict(study.user_attrs[CACHE_ATTR.format(optimizer=params["optimizer"])]["result"])
        assert params["lr"] == pytest.approx(test.suggestion)


def test_find_lr_reports_the_suggestion_and_the_limit(write_study, stores):
    report = autolr.find_lr(study_file(write_study), tracking_uri=None, storage=stores["storage"])
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert 1.0 <= data["max_stable_lr"] / 2.0 <= 1.5  # 2/L = 2
    assert 0 < data["suggestion"] <= data["max_stable_lr"]
    section = data["optimizers"]["sgd"]
    assert section["suggestion"] == data["suggestion"] and section["cached"] is False
    assert len(section["curve"]["lr"]) == len(section["curve"]["loss"]) > 0
    assert "train sgd at lr" in report.describe()
    named = {"sgd": "sgd", "schedulefree_adamw": "sgd"}  # a name wider than the column's header: the columns still line up
    wide = dataclasses.replace(report, **{f: {k: getattr(report, f)[v] for k, v in named.items()} for f in ("results", "bounds", "cached")})
    header, *rows = wide.describe().splitlines()[1:4]
    assert rows[0].index(f"{wide.suggestion:>10.4g}") == rows[1].index(f"{wide.suggestion:>10.4g}") == header.index("suggestion")


def test_find_lr_on_a_study_whose_trials_stayed_low_says_their_limit_is_what_they_tried(write_study, stores):
    """A fixed-bounds study that only tried small rates has a limit "from N stable trials" far below
    the edge; find-lr's advice must not read as if its suggestion broke that limit."""
    text = LEAST_SQUARES.format(name="lsq-low", trials=3, optimizers="{sgd: {momentum: 0.0}}").replace("lr: auto", "lr: {low: 1.0e-3, high: 1.0e-2}")
    path = write_study(text + "confirm: false\n")
    autolr.tune(path, storage=stores["storage"], tracking_uri=None, progress=False)
    report = autolr.find_lr(path, storage=stores["storage"], tracking_uri=None)
    limit, measured = report.limit("sgd"), report.results["sgd"].max_stable_lr
    assert limit.source == "3 stable trials" and limit.lr <= 1e-2 < report.suggestion <= measured  # 2/L = 2: the edge
    advice = report.describe().splitlines()[-1]
    assert advice == (
        f"train sgd at lr {report.suggestion:.4g} (the range test: constant rates stable up to {measured:.4g}); "
        f"the study's 3 stable trials reached {limit.lr:.4g} (the highest peak rate they were stable at: what they tried, not a measured edge)"
    )


def test_find_lr_reads_the_cache_of_an_lr_auto_study(write_study, stores, monkeypatch):
    path = study_file(write_study)
    autolr.tune(path, storage=stores["storage"], tracking_uri=None)
    monkeypatch.setattr(autobounds, "range_test_for", lambda *a, **k: pytest.fail("measured again"))
    report = autolr.find_lr(path, storage=stores["storage"], tracking_uri=None)
    assert report.cached == {"sgd": True}


def test_cli_find_lr_json_is_one_object(write_study, stores, capsys):
    path = study_file(write_study)
    assert main(["find-lr", str(path), "--json", "--steps", "60", "--storage", stores["storage"], "--tracking-uri", stores["tracking_uri"]]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["optimizer"] == "sgd" and 0 < data["suggestion"] <= data["max_stable_lr"]
    assert data["optimizers"]["sgd"]["steps"] <= 60
    _, tests, _ = range_test_runs(stores["tracking_uri"], "lsq-auto")
    assert len(tests) == 1 and "mlflow.parentRunId" not in tests[0].data.tags


def test_cli_find_lr_rejects_an_optimizer_the_study_does_not_have(write_study, stores, capsys):
    path = study_file(write_study)
    assert main(["find-lr", str(path), "--optimizer", "adam", "--storage", stores["storage"], "--tracking-uri", stores["tracking_uri"]]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"autolr: error: {path}: --optimizer: expected one of the study's optimizers ['sgd'], got 'adam'"


@pytest.mark.parametrize(("code", "key"), [('loop: "my_loop:train"\n', "loop"), ("", "task")])
def test_cli_find_lr_on_a_study_without_a_task_is_one_line(write_study, stores, capsys, code, key):
    """A loop: study, or a file for a callable task, has no batches autolr can probe: one line, exit 2."""
    path = write_study(f"name: no-task\n{code}trials: 2\nsearch: {{lr: {{low: 0.001, high: 0.1}}}}\n")
    assert main(["find-lr", str(path), "--storage", stores["storage"], "--tracking-uri", stores["tracking_uri"]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"autolr: error: {path}: {key}: expected ") and "\n" not in err


def test_find_lr_rejects_a_budget_too_small_to_bisect(write_study):
    with pytest.raises(autolr.StudyFileError, match=r"--steps: expected an integer >= 30"):
        autolr.find_lr(study_file(write_study), steps=10, tracking_uri=None)


def test_bounds_run_from_a_decade_below_the_suggestion_to_the_first_unstable_rate():
    probe = Probe(lr=1.0, stable=True, reason="", steps=12, end_loss=0.1)
    result = RangeTestResult(0.2, 1.05, 1.0, 1.1, (), (), (), (probe,), 50, 500)
    assert lr_bounds_from(result) == (pytest.approx(0.02), 1.1)
    nothing_unstable = RangeTestResult(0.2, 1.0, 1.0, None, (), (), (), (), 50, 500)
    assert lr_bounds_from(nothing_unstable) == (pytest.approx(0.02), 1.0)
