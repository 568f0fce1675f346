"""Trials read in plain statements (``autolr.fast_read``): the ``FrozenTrial`` objects Optuna's own
``RDBStorage`` builds, for every filter its cache and its callers use, the same errors, and only on
the Optuna versions where that was checked."""

from __future__ import annotations

import math
import warnings

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from autolr import store
from autolr.fast_read import FastRead
from autolr.fast_report import verified

STATE_SETS = [None, (TrialState.COMPLETE,), (TrialState.PRUNED, TrialState.RUNNING), (TrialState.WAITING,), (TrialState.FAIL, TrialState.COMPLETE)]


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/reads.db"
    return request.getfixturevalue("postgres_url")


def _fill(storage, name: str, *, directions=("minimize",)) -> optuna.Study:
    """A study holding every kind of trial: each state, every distribution, odd values and reports,
    nested attrs; and a second study beside it, whose trials interleave with its ids."""
    study = optuna.create_study(storage=storage, study_name=name, directions=list(directions))
    other = optuna.create_study(storage=storage, study_name=f"{name}-other")
    n = len(directions)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        for i in range(12):
            trial = study.ask()
            trial.suggest_float("lr", 1e-5, 1.0, log=True)
            trial.suggest_categorical("optimizer", ["adam", "sgd", None, True, 3])
            trial.suggest_int("layers", 1, 8)
            trial.suggest_float("warmup", 0.0, 0.2, step=0.05)
            trial.set_user_attr("params", {"lr": 0.1, "nested": [1, {"a": None}], "text": "é"})
            trial.set_user_attr("n", i)
            storage.set_trial_system_attr(trial._trial_id, "sys", [i, "x"])
            for step, value in enumerate([0.5, math.nan, math.inf, -math.inf, 1e-300][: i % 6]):
                storage.set_trial_intermediate_value(trial._trial_id, step, value)  # trial.report refuses multi-objective
            other.tell(other.ask(), float(i))  # an interleaved trial id of the other study
            if i % 4 == 0:
                study.tell(trial, [float(i), -math.inf] if n > 1 else (math.inf if i == 4 else -float(i)))
            elif i % 4 == 1:
                study.tell(trial, state=TrialState.PRUNED)
            elif i % 4 == 2:
                study.tell(trial, state=TrialState.FAIL)
            # i % 4 == 3: left RUNNING
        study.enqueue_trial({"lr": 0.01, "optimizer": "sgd"}, user_attrs={"queued": True})
        study.add_trial(optuna.trial.create_trial(params={"x": 2.0}, distributions={"x": FloatDistribution(0, 3)}, values=[1.0] * n))
    return study


def _both(storage, call: str, *args):
    """The fast read and Optuna's own, of the same call."""
    fast = getattr(storage, call)(*args)
    plain = getattr(RDBStorage, call)(storage, *args)
    return fast, plain


def _same(fast, plain, *, ordered: bool) -> None:
    """Equal as FrozenTrials (``==`` compares every field) and in what ``==`` leaves out or lets
    pass: the trial id, the types of params, NaN reports, the order of params; of attrs and reports
    too where Optuna's is the database's index order (SQLite; on PostgreSQL Optuna's follows the
    table's physical order, the fast read's the key and the step)."""
    assert len(fast) == len(plain)
    for a, b in zip(fast, plain):
        assert (a._trial_id, a.number, a.state, a.values) == (b._trial_id, b.number, b.state, b.values)
        assert (a.datetime_start, a.datetime_complete) == (b.datetime_start, b.datetime_complete)
        assert a.params == b.params and [type(v) for v in a.params.values()] == [type(v) for v in b.params.values()]
        assert list(a.params) == list(b.params) and a.distributions == b.distributions
        assert a.user_attrs == b.user_attrs and a.system_attrs == b.system_attrs
        assert list(a.user_attrs) == (list(b.user_attrs) if ordered else sorted(b.user_attrs))
        reports = dict(sorted(b.intermediate_values.items())) if not ordered else b.intermediate_values
        assert list(a.intermediate_values) == list(reports)
        assert all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a.intermediate_values.values(), reports.values()))


@pytest.mark.parametrize("directions", [("minimize",), ("minimize", "maximize")])
def test_fast_reads_build_the_trials_optuna_builds(url, unique_name, directions) -> None:
    assert verified(optuna.__version__), f"Optuna {optuna.__version__}: compare its trials, then add it to VERIFIED_OPTUNA"
    storage = store._open_storage(url)
    study = _fill(storage, unique_name, directions=directions)
    ids = [t._trial_id for t in RDBStorage._get_trials(storage, study._study_id, None, set(), -1)]
    assert storage._reader(), "the fast path was not taken"
    ordered = url.startswith("sqlite")
    for trial_id in ids:
        fast, plain = _both(storage, "get_trial", trial_id)
        _same([fast], [plain], ordered=ordered)
    filters = [(set(), -1), (set(), ids[5]), ({ids[1], ids[3], ids[9]}, ids[6]), ({ids[2]}, ids[-1]), (set(ids), ids[0]), (set(), ids[-1])]
    for states in STATE_SETS:
        for included, greater in filters:
            _same(*_both(storage, "_get_trials", study._study_id, states, included, greater), ordered=ordered)
    plain = store._open_storage(url)
    plain.fast_read = False
    _same(study.get_trials(), optuna.load_study(study_name=unique_name, storage=plain).get_trials(), ordered=ordered)
    assert plain._fast_read is None
    if not url.startswith("sqlite"):
        for name in (unique_name, f"{unique_name}-other"):
            optuna.delete_study(study_name=name, storage=url)


def test_fast_reads_refuse_unknown_trials_and_studies_as_optuna_does(tmp_path) -> None:
    storage = store._open_storage(f"sqlite:///{tmp_path}/reads.db")
    study = optuna.create_study(storage=storage)
    for call, args in (("get_trial", (999,)), ("_get_trials", (study._study_id + 1, None, set(), -1))):
        errors = []
        for method in (getattr(storage, call), lambda *a, call=call: getattr(RDBStorage, call)(storage, *a)):
            with pytest.raises(KeyError) as caught:
                method(*args)
            errors.append(str(caught.value))
        assert errors[0] == errors[1]
    assert storage._get_trials(study._study_id, None, set(), -1) == []  # an empty study is no error


def test_fast_reads_are_off_outside_the_verified_optuna_versions(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(optuna, "__version__", "5.99.0")
    storage = store._open_storage(f"sqlite:///{tmp_path}/reads.db")
    assert FastRead.for_storage(storage) is None
    study = optuna.create_study(storage=storage)
    study.add_trial(optuna.trial.create_trial(params={"k": 2}, distributions={"k": IntDistribution(1, 3)}, value=1.0))
    assert study.trials[0].params == {"k": 2} and storage._fast_read is False  # read through Optuna's RDBStorage


def test_a_storage_with_fast_reads_pickles_without_its_engine(tmp_path) -> None:
    import pickle

    storage = store._open_storage(f"sqlite:///{tmp_path}/reads.db")
    study = optuna.create_study(storage=storage)
    study.add_trial(optuna.trial.create_trial(params={"c": "a"}, distributions={"c": CategoricalDistribution(["a", "b"])}, value=1.0))
    assert storage.get_trial(study.trials[0]._trial_id).params == {"c": "a"} and storage._fast_read
    copy = pickle.loads(pickle.dumps(storage))
    assert copy._fast_read is None and copy.get_trial(study.trials[0]._trial_id).params == {"c": "a"}


def test_a_trial_told_elsewhere_between_the_statements_keeps_all_its_rows(url, unique_name) -> None:
    """A read by state picks the trial rows first and their params, values and attrs after: a trial
    another process finishes in between is still read whole (its rows picked by id, not by state)."""
    import sqlalchemy as sa

    storage, other = store._open_storage(url), store._open_storage(url)
    study = optuna.create_study(storage=storage, study_name=unique_name)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        trial = study.ask()
    trial.suggest_float("lr", 1e-3, 1.0)
    trial.set_user_attr("owner", "me")
    told = []

    def tell_elsewhere(conn, cursor, statement, *args) -> None:
        if not told and statement.lstrip().upper().startswith("SELECT") and "trial_params" not in statement and "datetime_start" in statement:
            told.append(other.set_trial_state_values(trial._trial_id, TrialState.COMPLETE, [0.5]))

    sa.event.listen(storage.engine, "after_cursor_execute", tell_elsewhere)
    try:
        (read,) = storage._get_trials(study._study_id, (TrialState.RUNNING,), set(), -1)
    finally:
        sa.event.remove(storage.engine, "after_cursor_execute", tell_elsewhere)
    assert told == [True] and read.state == TrialState.RUNNING
    assert read.params == {"lr": trial.params["lr"]} and read.user_attrs == {"owner": "me"}
    if not url.startswith("sqlite"):
        optuna.delete_study(study_name=unique_name, storage=url)


def test_many_included_ids_are_read_without_binding_each(tmp_path, monkeypatch) -> None:
    """More unfinished trials than ``IN_LIMIT`` (SQLite's bound variables are 999 in older builds):
    the trials from the lowest id are read and the rest left out, as Optuna's fallback does."""
    from autolr import fast_read

    monkeypatch.setattr(fast_read, "IN_LIMIT", 3)
    storage = store._open_storage(f"sqlite:///{tmp_path}/reads.db")
    study = _fill(storage, "many")
    ids = [t._trial_id for t in RDBStorage._get_trials(storage, study._study_id, None, set(), -1)]
    for states in STATE_SETS:
        for included, greater in (({ids[1], ids[3], ids[5], ids[7]}, ids[8]), (set(ids[2:9]), ids[10]), (set(ids), ids[0])):
            _same(*_both(storage, "_get_trials", study._study_id, states, included, greater), ordered=True)
