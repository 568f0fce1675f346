"""A trial's per-epoch report in one statement (``autolr.fast_report``): the rows and errors Optuna's own
``RDBStorage`` gives, and only on the Optuna versions where that was checked."""

from __future__ import annotations

import math
import warnings

import optuna
import pytest
import sqlalchemy as sa
from optuna.exceptions import UpdateFinishedTrialError

from autolr import store
from autolr.fast_report import FastReport, verified

REPORTS = [(1, 0.5), (2, math.nan), (3, math.inf), (4, -math.inf), (5, 1e-300), (2, 0.25), (0, -3.0), (6, math.nan)]  # step 2 twice: the last one stays


def _rows(storage, study_name: str) -> list[tuple]:
    """Each trial's intermediate values as stored: (trial number, step, value, type)."""
    query = sa.text(
        "select t.number, v.step, v.intermediate_value, v.intermediate_value_type from trial_intermediate_values v "
        "join trials t on t.trial_id = v.trial_id join studies s on s.study_id = t.study_id where s.study_name = :name order by t.number, v.step"
    )
    with storage.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(query, {"name": study_name})]


def _report_all(storage, name: str) -> optuna.Study:
    study = optuna.create_study(storage=storage, study_name=name)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage")  # study.ask() on a storage with heartbeats
        for _ in range(2):
            trial = study.ask()
            for step, value in REPORTS:
                storage.set_trial_intermediate_value(trial._trial_id, step, value)
            study.tell(trial, 1.0)
    return study


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/reports.db"
    return request.getfixturevalue("postgres_url")


def test_fast_reports_write_exactly_the_rows_optuna_writes(url, unique_name) -> None:
    assert verified(optuna.__version__), f"Optuna {optuna.__version__}: compare its rows, then add it to VERIFIED_OPTUNA"
    fast, plain = store._open_storage(url), store._open_storage(url)
    plain.fast_report = False
    _report_all(fast, f"{unique_name}-fast")
    _report_all(plain, f"{unique_name}-plain")
    assert fast._fast, "the fast path was not taken"
    assert _rows(fast, f"{unique_name}-fast") == _rows(plain, f"{unique_name}-plain")
    study = optuna.load_study(study_name=f"{unique_name}-fast", storage=fast)
    for trial in study.trials:  # read back as reported
        values = trial.intermediate_values
        assert math.isnan(values.pop(6))
        assert values == {0: -3.0, 1: 0.5, 2: 0.25, 3: math.inf, 4: -math.inf, 5: 1e-300}
    if not url.startswith("sqlite"):
        for name in ("fast", "plain"):
            optuna.delete_study(study_name=f"{unique_name}-{name}", storage=url)


def test_fast_reports_refuse_finished_and_unknown_trials_as_optuna_does(tmp_path) -> None:
    storage = store._open_storage(f"sqlite:///{tmp_path}/reports.db")
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    study.tell(trial, 1.0)
    with pytest.raises(UpdateFinishedTrialError, match=r"Trial#0 has already finished and can not be updated"):
        storage.set_trial_intermediate_value(trial._trial_id, 1, 0.5)
    with pytest.raises(KeyError):
        storage.set_trial_intermediate_value(999, 1, 0.5)
    assert _rows(storage, study.study_name) == []


def test_fast_reports_are_off_outside_the_verified_optuna_versions(tmp_path, monkeypatch) -> None:
    assert verified("5.1.0") and verified("5.1.3") and not verified("5.2.0") and not verified("4.5.0")
    monkeypatch.setattr(optuna, "__version__", "5.99.0")
    storage = store._open_storage(f"sqlite:///{tmp_path}/reports.db")
    assert FastReport.for_storage(storage) is None
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    trial.report(0.5, 1)  # through Optuna's RDBStorage
    assert study.trials[0].intermediate_values == {1: 0.5} and storage._fast is False
