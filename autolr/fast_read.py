"""Reading stored trials in plain statements instead of Optuna's ORM: the same ``FrozenTrial`` objects.

Why: every trial is read back several times. Optuna's ``Study.tell`` reads the trial before and after
storing its state, ``Study.ask`` refreshes the study's trial cache, and the sampler and the pruner read
it again. Optuna's ``RDBStorage`` builds each read through its ORM: the trial row and, per trial, its
params, values, attributes and reports in six statements, most of the cost in the ORM itself
(``get_trial`` ~1.4 ms, a cache refresh of one trial ~2.6 ms on SQLite here, against 0.03 ms for the
six statements themselves; these: ~0.3 ms each, ``bench/trial_reads.py``). Between two trials, that is most of the time not spent training.

This runs the same six ``SELECT``s through SQLAlchemy Core, with the installed Optuna's own table
definitions and value conversions, and builds the ``FrozenTrial`` as Optuna's
``_build_frozen_trial_from_trial_model`` does (datetimes stored as naive UTC, shown as naive local
time; values and reports decoded from their stored form; params sorted by their row id). It reads
Optuna's schema, so it is used only with the Optuna versions it was compared against trial for trial
(``tests/test_fast_read.py``, as :mod:`autolr.fast_report`); with any other version, or a database
other than SQLite and PostgreSQL, trials are read through Optuna's ``RDBStorage``.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Container, Iterable

import optuna
import sqlalchemy as sa
from optuna.distributions import json_to_distribution
from optuna.trial import FrozenTrial, TrialState

from autolr.fast_report import fast_path

__all__ = ["FastRead"]

logger = logging.getLogger(__name__)

IN_LIMIT = 500  # included trial ids bound one by one at most (Optuna's own IN has no bound, and a fallback)


class FastRead:
    """Reads trials of one database; see the module."""

    def __init__(self, engine: sa.engine.Engine) -> None:
        from optuna.storages._rdb import models

        self.engine = engine
        self._missing = models.NOT_FOUND_MSG
        self._value = models.TrialValueModel.stored_repr_to_value
        self._report = models.TrialIntermediateValueModel.stored_repr_to_intermediate_value
        self.trials = models.TrialModel.__table__
        self.study = sa.select(models.StudyModel.__table__.c.study_id).where(models.StudyModel.__table__.c.study_id == sa.bindparam("study_id"))
        t = self.trials
        self._columns = (t.c.trial_id, t.c.number, t.c.state, t.c.datetime_start, t.c.datetime_complete)
        # name -> (table, the order of its rows, the columns read). Params in the order Optuna sorts them
        # (their row ids); attrs and reports in the order of the unique index SQLite reads them by for
        # Optuna (key, step), which on PostgreSQL Optuna leaves to the table's physical order.
        self._children = {
            "params": (models.TrialParamModel.__table__, "param_id", ("param_name", "param_value", "distribution_json")),
            "values": (models.TrialValueModel.__table__, "objective", ("objective", "value", "value_type")),
            "user_attrs": (models.TrialUserAttributeModel.__table__, "key", ("key", "value_json")),
            "system_attrs": (models.TrialSystemAttributeModel.__table__, "key", ("key", "value_json")),
            "reports": (models.TrialIntermediateValueModel.__table__, "step", ("step", "intermediate_value", "intermediate_value_type")),
        }
        self._one = self._statements(t.c.trial_id == sa.bindparam("trial_id"))
        self._cache: dict[tuple, tuple] = {}  # built statements, by the shape of the filter

    @classmethod
    def for_storage(cls, storage: optuna.storages.RDBStorage) -> FastRead | None:
        """The reader of ``storage``'s database, or None (logged at debug) when it cannot take it."""
        return fast_path(cls, storage, "reads")

    def _statements(self, which: sa.ColumnElement[bool], *, states: bool = False) -> tuple:
        """The trials matching ``which`` (and the ``states`` parameter, where given), by trial id, and
        each child table's rows of the trials matching ``which``: a trial's id and study never change,
        its state may between two statements (another process tells it), and a trial read must come
        with all its rows."""
        t = self.trials
        trials = sa.select(*self._columns).where(which & t.c.state.in_(sa.bindparam("states", expanding=True)) if states else which)
        ids = sa.select(t.c.trial_id).where(which)
        children = {
            name: sa.select(table.c.trial_id, *(table.c[c] for c in columns)).where(table.c.trial_id.in_(ids)).order_by(table.c.trial_id, table.c[order])
            for name, (table, order, columns) in self._children.items()
        }
        return trials.order_by(t.c.trial_id), children

    def trial(self, trial_id: int) -> FrozenTrial:
        """``RDBStorage.get_trial``: KeyError where there is no such trial."""
        with self.engine.connect() as conn:
            found = self._read(conn, self._one, {"trial_id": trial_id})
        if not found:
            raise KeyError(self._missing)  # Optuna's words (TrialModel.find_or_raise_by_id)
        return found[0]

    def study_trials(self, study_id: int, states: Container[TrialState] | None, included_trial_ids: set[int], trial_id_greater_than: int) -> list[FrozenTrial]:
        """``RDBStorage._get_trials``: the study's trials (in ``states``) whose id is in
        ``included_trial_ids`` or above ``trial_id_greater_than``, by trial id; KeyError where there is
        no such study. More than ``IN_LIMIT`` included ids are not bound one by one (SQLite's limit on
        bound variables is 999 in older builds): the trials from the lowest of them are read and the
        others left out here, as Optuna does when its ``IN`` fails."""
        included = sorted(i for i in included_trial_ids if i <= trial_id_greater_than)  # as Optuna filters them
        keep = None
        if len(included) > IN_LIMIT:
            wanted = set(included)
            keep, included = (lambda i: i in wanted or i > trial_id_greater_than), []
            low = min(wanted)
        t = self.trials
        shape = ("in" if included else "from" if keep else "", trial_id_greater_than > -1, states is not None)
        if shape not in self._cache:
            which = t.c.study_id == sa.bindparam("study_id")
            if shape[0] == "in":
                which = which & sa.or_(t.c.trial_id.in_(sa.bindparam("included", expanding=True)), t.c.trial_id > sa.bindparam("greater"))
            elif shape[0] == "from":
                which = which & (t.c.trial_id >= sa.bindparam("low"))
            elif shape[1]:
                which = which & (t.c.trial_id > sa.bindparam("greater"))
            self._cache[shape] = self._statements(which, states=shape[2])
        params = {"study_id": study_id, "included": included, "greater": trial_id_greater_than}
        if keep is not None:
            params["low"] = low
        if states is not None:
            assert isinstance(states, Iterable)
            params["states"] = list(states)
        with self.engine.connect() as conn:
            found = self._read(conn, self._cache[shape], params, keep=keep)
            if not found and conn.execute(self.study, {"study_id": study_id}).first() is None:
                raise KeyError(self._missing)  # Optuna's words (StudyModel.find_or_raise_by_id)
        return found

    def _read(self, conn: sa.Connection, statements: tuple, params: dict, *, keep: Callable[[int], bool] | None = None) -> list[FrozenTrial]:
        trials, children = statements
        rows = [row for row in conn.execute(trials, params) if keep is None or keep(row.trial_id)]
        if not rows:
            return []
        # Child rows of trials created after the first statement are left out (only those read above are built).
        kids = {name: _by_trial(conn.execute(statement, params)) for name, statement in children.items()}
        return [self._frozen(row, {name: rows_of.get(row.trial_id, ()) for name, rows_of in kids.items()}) for row in rows]

    def _frozen(self, row: sa.Row, kids: dict[str, list]) -> FrozenTrial:
        values = None
        if kids["values"]:
            values = [0.0] * len(kids["values"])
            for objective, value, kind in kids["values"]:
                values[objective] = self._value(value, kind)
        distributions = {name: json_to_distribution(text) for name, _, text in kids["params"]}
        return FrozenTrial(
            number=row.number,
            state=row.state,
            value=None,
            values=values,
            datetime_start=_local(row.datetime_start),
            datetime_complete=_local(row.datetime_complete),
            params={name: distributions[name].to_external_repr(value) for name, value, _ in kids["params"]},
            distributions=distributions,
            user_attrs={key: json.loads(text) for key, text in kids["user_attrs"]},
            system_attrs={key: json.loads(text) for key, text in kids["system_attrs"]},
            intermediate_values={step: self._report(value, kind) for step, value, kind in kids["reports"]},
            trial_id=row.trial_id,
        )


def _by_trial(result: sa.CursorResult) -> dict[int, list]:
    grouped: dict[int, list] = defaultdict(list)
    for trial_id, *rest in result:
        grouped[trial_id].append(rest)
    return grouped


def _local(utc: datetime.datetime | None) -> datetime.datetime | None:
    """A stored naive UTC time as Optuna's ``TrialModel`` shows it: naive local time."""
    return None if utc is None else utc.replace(tzinfo=datetime.timezone.utc).astimezone().replace(tzinfo=None)
