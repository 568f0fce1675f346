"""Optional: a run's rows written into MLflow's own SQL tables in one transaction, for SQLite/PostgreSQL.

Why: ``log_batch`` builds an ORM object per point (~60 us each) and every call is a transaction; this
inserts the same rows through the driver's ``executemany`` (~1-5 us a row), with the table definitions
of the installed MLflow, keeping ``latest_metrics`` as MLflow does (per key, the point with the largest
(step, timestamp, value)). It writes into another package's private schema, so it is used only with
the MLflow versions it was compared against row for row (``tests/test_tracking_fastpath.py``); with
any other version, any other store, or a metric name MLflow might reject, the writer goes through
MLflow's public ``log_batch`` (which also deduplicates a point logged twice).
"""

from __future__ import annotations

import logging
import math
import re
import sys
import uuid
from collections.abc import Sequence

import mlflow
import sqlalchemy as sa
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME, MLFLOW_USER
from mlflow.utils.uri import append_to_uri_path

from autolr.tracking._messages import CreateRun, Point, RunBatch

__all__ = ["VERIFIED_MLFLOW", "SqlFastPath", "verified"]

logger = logging.getLogger(__name__)

VERIFIED_MLFLOW = ("3.17", "3.18")  # major.minor of the MLflow versions whose tables and log_batch were compared
_MAX_FLOAT = sys.float_info.max
_SAFE_NAME = re.compile(r"^[\w\-./ :]{1,250}$")
_POINT_COLUMNS = ("run_uuid", "key", "value", "timestamp", "step", "is_nan")


def verified(mlflow_version: str) -> bool:
    return ".".join(mlflow_version.split(".")[:2]) in VERIFIED_MLFLOW


class SqlFastPath:
    """Writes a :class:`RunBatch` (creation, points, tags, end) in one transaction; see the module."""

    def __init__(self, engine: sa.engine.Engine, tables: Sequence[sa.Table]) -> None:
        self.engine = engine
        self.metrics, self.latest, self.tags, self.runs, self.params = tables
        self._safe_keys: set[str] = set()
        # Built once: SQLAlchemy then reuses their compiled form (building one costs more than running it).
        # Points go through the driver's own executemany with plain tuples: ~1 us a row instead of ~5.
        quote = engine.dialect.identifier_preparer.quote
        mark = "?" if engine.dialect.name == "sqlite" else "%s"
        columns = ", ".join(quote(c) for c in _POINT_COLUMNS)
        marks = ", ".join([mark] * len(_POINT_COLUMNS))
        self.insert_points = f"INSERT INTO {quote(self.metrics.name)} ({columns}) VALUES ({marks})"
        self.upsert_latest = self._upsert(self.latest, ("value", "timestamp", "step", "is_nan"), newer=True)
        self.upsert_tags = self._upsert(self.tags, ("value",))
        self.end_run = (
            sa.update(self.runs).where(self.runs.c.run_uuid == sa.bindparam("run_id")).values(status=sa.bindparam("status"), end_time=sa.bindparam("end_time"))
        )

    @classmethod
    def for_client(cls, client) -> SqlFastPath | None:
        """The fast path of ``client``'s store, or None (logged at debug) when it cannot take it."""
        if not verified(mlflow.__version__):
            logger.debug("MLflow %s: the SQL fast path is verified on %s only; writing through log_batch", mlflow.__version__, VERIFIED_MLFLOW)
            return None
        try:
            from mlflow.store.tracking.dbmodels.models import (
                SqlLatestMetric,
                SqlMetric,
                SqlParam,
                SqlRun,
                SqlTag,
            )
            from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

            store = client._tracking_client.store
        except (ImportError, AttributeError) as exc:
            logger.debug("no SQL fast path (%s); writing through log_batch", exc)
            return None
        if not isinstance(store, SqlAlchemyStore) or store.engine.dialect.name not in ("sqlite", "postgresql"):
            return None
        return cls(store.engine, [m.__table__ for m in (SqlMetric, SqlLatestMetric, SqlTag, SqlRun, SqlParam)])

    def write(self, batch: RunBatch, *, artifact_root: str | None = None) -> str | None:
        """One transaction: the run's rows first when ``batch.new_run`` (its artifacts under
        ``artifact_root``), then the points, the tags, the end. Returns the run's id, or None when
        nothing was written (the caller then goes through MLflow's API)."""
        run = _run_rows(batch.new_run, artifact_root) if batch.new_run is not None else None
        run_id = run["run"]["run_uuid"] if run is not None else batch.run_id
        rows = self._point_rows(run_id, batch.points)
        if rows is None:
            return None
        try:
            with self.engine.begin() as conn:
                if run is not None:
                    conn.execute(sa.insert(self.runs), [run["run"]])
                    conn.execute(sa.insert(self.tags), run["tags"])
                    if run["params"]:
                        conn.execute(sa.insert(self.params), run["params"])
                if rows:
                    conn.exec_driver_sql(self.insert_points, rows)
                    conn.execute(self.upsert_latest, _latest(run_id, rows))
                if batch.tags:
                    conn.execute(self.upsert_tags, [{"run_uuid": run_id, "key": k, "value": v} for k, v in batch.tags.items()])
                if batch.end is not None:
                    conn.execute(self.end_run, {"run_id": run_id, "status": batch.end.status, "end_time": batch.end.end_ms})
        except sa.exc.SQLAlchemyError as exc:  # rolled back: nothing of this batch was written
            logger.info("fast write of %d points to run %s fell back to MLflow's API: %s", len(rows), run_id, exc)
            return None
        return run_id

    def _point_rows(self, run_id: str, points: Sequence[Point]) -> list[tuple] | None:
        """The ``metrics`` rows, values stored as MLflow stores them; None for a name MLflow might refuse."""
        rows, safe = [], self._safe_keys
        for key, value, timestamp, step in points:
            if key not in safe:
                if not _SAFE_NAME.match(key):
                    return None
                safe.add(key)
            is_nan, value = (False, value) if -_MAX_FLOAT <= value <= _MAX_FLOAT else _sanitize(value)
            rows.append((run_id, key, value, timestamp, step, is_nan))
        return rows

    def _upsert(self, table: sa.Table, columns: Sequence[str], *, newer: bool = False):
        """INSERT ... ON CONFLICT (key, run_uuid) DO UPDATE, only when newer (for latest_metrics)."""
        if self.engine.dialect.name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert
        stmt = insert(table)
        new, old = stmt.excluded, table.c
        where = sa.tuple_(new.step, new.timestamp, new.value) > sa.tuple_(old.step, old.timestamp, old.value) if newer else None
        return stmt.on_conflict_do_update(index_elements=["key", "run_uuid"], set_={c: new[c] for c in columns}, where=where)


def _latest(run_id: str, rows: list[tuple]) -> list[dict]:
    """Per key, the row with the largest (step, timestamp, value): what ``latest_metrics`` keeps."""
    latest: dict[str, tuple] = {}
    for _, key, value, timestamp, step, is_nan in rows:
        best = latest.get(key)
        if best is None or (step, timestamp, value) > best[:3]:
            latest[key] = (step, timestamp, value, is_nan)
    return [{"run_uuid": run_id, "key": k, "step": s, "timestamp": t, "value": v, "is_nan": n} for k, (s, t, v, n) in latest.items()]


def _run_rows(new_run: CreateRun, artifact_root: str | None) -> dict:
    """The rows of a RUNNING run with its tags and params, as ``SqlAlchemyStore.create_run`` and
    ``log_batch`` would write them."""
    run_id = new_run.run_uuid or uuid.uuid4().hex
    run = {"run_uuid": run_id, "name": new_run.run_name, "source_type": "UNKNOWN", "source_name": "", "entry_point_name": "",
           "user_id": new_run.tags.get(MLFLOW_USER, "unknown"), "status": "RUNNING", "start_time": new_run.start_ms,
           "end_time": None, "deleted_time": None, "source_version": "", "lifecycle_stage": "active",
           "experiment_id": int(new_run.experiment_id), "artifact_uri": append_to_uri_path(artifact_root, run_id, "artifacts")}  # fmt: skip
    tags = {MLFLOW_RUN_NAME: new_run.run_name, **new_run.tags}
    return {
        "run": run,
        "tags": [{"run_uuid": run_id, "key": k, "value": v[:8000]} for k, v in tags.items()],
        "params": [{"run_uuid": run_id, "key": k, "value": v[:6000]} for k, v in new_run.params.items()],
    }


def _sanitize(value: float) -> tuple[bool, float]:
    """As MLflow stores values: NaN as 0 with is_nan, infinities as the largest finite floats."""
    if math.isnan(value):
        return True, 0.0
    if math.isinf(value):
        return False, math.copysign(_MAX_FLOAT, value)
    return False, value
