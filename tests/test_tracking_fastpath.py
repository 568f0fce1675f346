"""The SQL fast path writes exactly the rows MLflow's public API writes, and only where it was verified."""

from __future__ import annotations

import contextlib
import logging
import math
import sqlite3

import mlflow
import pytest
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from autolr.tracking._fastpath import SqlFastPath, verified
from autolr.tracking._messages import CreateRun, RunBatch, RunEnd
from autolr.tracking._store import open_client

TAGS = {"autolr.trial": "3", "autolr.state": "RUNNING", "autolr.role": "trial", "mlflow.user": "someone"}
PARAMS = {"lr": "0.001", "optimizer": "adam", "warmup": "0.05"}
START_MS = 1_700_000_000_000
# Two batches, as the writer sends them: steps out of order, one step logged twice (new timestamp),
# NaN and both infinities, a per-layer name, a key whose latest point comes in the second batch.
FIRST = [
    ("train_loss", 2.0, START_MS + 10, 0),
    ("train_loss", 1.5, START_MS + 11, 1),
    ("train_loss", math.nan, START_MS + 12, 2),
    ("lr", 1e-3, START_MS + 10, 0),
    ("lr", 1e-3, START_MS + 10, 1),
    ("grad_norm", math.inf, START_MS + 12, 2),
    ("grad_norm", 3.0, START_MS + 10, 0),
    ("weight_grad_norm.0.weight", 0.25, START_MS + 10, 0),
    ("val_loss", -math.inf, START_MS + 12, 1),
]
SECOND = [
    ("train_loss", 0.5, START_MS + 20, 2),  # step 2 again, later: now the latest
    ("train_loss", 0.75, START_MS + 19, 1),
    ("lr", 5e-4, START_MS + 21, 3),
    ("val_loss", 0.4, START_MS + 22, 2),
]
END = RunEnd("FINISHED", START_MS + 30)


def _through_fast_path(fast: SqlFastPath, client: MlflowClient, experiment_id: str) -> str:
    new_run = CreateRun(0, experiment_id, "trial-3", dict(TAGS), dict(PARAMS), START_MS)
    root = client.get_experiment(experiment_id).artifact_location
    run_id = fast.write(RunBatch(None, new_run=new_run, points=list(FIRST), tags={"autolr.gradients": "healthy"}), artifact_root=root)
    assert run_id is not None
    assert fast.write(RunBatch(run_id, points=list(SECOND), tags={"autolr.state": "COMPLETE", "autolr.value": "0.4"}, end=END)) == run_id
    return run_id


def _through_log_batch(client: MlflowClient, experiment_id: str) -> str:
    run_id = client.create_run(experiment_id, start_time=START_MS, run_name="trial-3", tags=dict(TAGS)).info.run_id
    client.log_batch(run_id, params=[Param(k, v) for k, v in PARAMS.items()])
    client.log_batch(run_id, metrics=[Metric(*p) for p in FIRST])
    client.log_batch(run_id, tags=[RunTag("autolr.gradients", "healthy")])
    client.log_batch(run_id, metrics=[Metric(*p) for p in SECOND])
    client.log_batch(run_id, tags=[RunTag("autolr.state", "COMPLETE"), RunTag("autolr.value", "0.4")])
    client.set_terminated(run_id, status=END.status, end_time=END.end_ms)
    return run_id


def _comparable(value):
    return "nan" if isinstance(value, float) and math.isnan(value) else value


def _read_back(client: MlflowClient, run_id: str) -> dict:
    run = client.get_run(run_id)
    info = {
        "status": run.info.status,
        "start_time": run.info.start_time,
        "end_time": run.info.end_time,
        "run_name": run.info.run_name,
        "user_id": run.info.user_id,
        "lifecycle_stage": run.info.lifecycle_stage,
        "experiment_id": run.info.experiment_id,
        "artifact_uri": run.info.artifact_uri.replace(run_id, "<run>"),
    }
    keys = sorted({p[0] for p in FIRST + SECOND})
    history = {k: sorted((m.step, m.timestamp, _comparable(m.value)) for m in client.get_metric_history(run_id, k)) for k in keys}
    latest = {k: _comparable(v) for k, v in run.data.metrics.items()}
    return {"info": info, "params": run.data.params, "tags": run.data.tags, "latest": latest, "history": history}


def _raw_rows(db_path, run_id: str) -> dict[str, list]:
    """The rows of MLflow's tables for one run, without the run id (it differs by construction)."""
    out = {}
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        for table in ("metrics", "latest_metrics", "params", "tags", "runs"):
            cursor = conn.execute(f"SELECT * FROM {table} WHERE run_uuid = ?", (run_id,))
            columns = [c[0] for c in cursor.description]
            rows = [tuple((c, str(v).replace(run_id, "<run>")) for c, v in zip(columns, row) if c != "run_uuid") for row in cursor.fetchall()]
            out[table] = sorted(rows)
    return out


def test_fast_path_writes_exactly_the_rows_log_batch_writes(tmp_path) -> None:
    db = tmp_path / "mlflow.db"
    client = open_client(f"sqlite:///{db}")
    experiment_id = client.create_experiment("fast", artifact_location=(tmp_path / "artifacts").as_uri())
    fast = SqlFastPath.for_client(client)
    assert fast is not None, f"no fast path on MLflow {mlflow.__version__}"
    fast_id = _through_fast_path(fast, client, experiment_id)
    api_id = _through_log_batch(client, experiment_id)
    fast_view, api_view = _read_back(client, fast_id), _read_back(client, api_id)
    for part in api_view:
        assert fast_view[part] == api_view[part], part
    fast_rows, api_rows = _raw_rows(db, fast_id), _raw_rows(db, api_id)
    for table in api_rows:
        assert fast_rows[table] == api_rows[table], table
    assert len(api_rows["metrics"]) == len(FIRST) + len(SECOND)


def test_fast_path_refuses_a_metric_name_mlflow_might_reject(tmp_path) -> None:
    client = open_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment("names")
    run_id = client.create_run(experiment_id).info.run_id
    fast = SqlFastPath.for_client(client)
    assert fast.write(RunBatch(run_id, points=[("bad\nname", 1.0, START_MS, 0)])) is None
    assert client.get_metric_history(run_id, "bad\nname") == []


def test_fast_path_is_off_outside_the_verified_mlflow_versions(tmp_path, monkeypatch, caplog) -> None:
    assert verified("3.17.2") and verified("3.18.0") and not verified("3.19.0") and not verified("4.0.0")
    client = open_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(mlflow, "__version__", "3.99.0")
    with caplog.at_level(logging.DEBUG, logger="autolr.tracking._fastpath"):
        assert SqlFastPath.for_client(client) is None
    assert "MLflow 3.99.0: the SQL fast path is verified on" in caplog.text


@pytest.mark.parametrize("tracking_uri", ["http://127.0.0.1:9"])
def test_fast_path_is_off_for_a_store_that_is_not_sql(tracking_uri) -> None:
    assert SqlFastPath.for_client(MlflowClient(tracking_uri)) is None
