"""NullTracker: the tracker that is off has every public method of Tracker, does nothing, imports no mlflow."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from autolr.tracking import NullTracker, NullTrialRun, Tracker, TrialRun


def _public(cls: type) -> dict[str, inspect.Signature | None]:
    out = {}
    for name, member in inspect.getmembers(cls):
        if name.startswith("_") and name not in ("__enter__", "__exit__"):
            continue
        function = getattr(member, "__wrapped__", member)  # contextmanager-wrapped parent_run
        out[name] = inspect.signature(function).replace(return_annotation=inspect.Signature.empty) if callable(function) else None
    return out


@pytest.mark.parametrize(("real", "null"), [(Tracker, NullTracker), (TrialRun, NullTrialRun)])
def test_null_objects_take_every_call_the_real_ones_take(real, null) -> None:
    real_api, null_api = _public(real), _public(null)
    assert set(real_api) <= set(null_api), f"missing on {null.__name__}: {sorted(set(real_api) - set(null_api))}"
    for name, signature in real_api.items():
        if signature is not None:
            assert null_api[name] is not None and null_api[name].parameters.keys() == signature.parameters.keys(), name


def test_null_tracker_records_nothing_and_never_waits() -> None:
    tracker = NullTracker()
    with tracker.parent_run("parent", params={"lr": 0.1}, tags={}) as parent, tracker.trial_run(parent, 0, {"lr": 0.1}) as run:
        run.log_steps(0, {"train_loss": [1.0, float("nan")]})
        run.log_metrics(1, {"val_loss": 0.5})
        run.flush()
        run.end("COMPLETE")
    assert parent is None and run.run_id is None
    assert tracker.flush() and tracker.trial_runs() == {} and tracker.metric_history("x", "lr") == ([], [])
    tracker.close()


def _fresh_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)


def test_null_tracker_imports_no_mlflow() -> None:
    done = _fresh_python("import sys; from autolr.tracking import NullTracker; NullTracker(); print('mlflow' in sys.modules)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_the_writer_process_imports_no_torch() -> None:
    done = _fresh_python("import sys, autolr.tracking._writer_process; print(sorted(m for m in ('torch', 'optuna') if m in sys.modules))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
