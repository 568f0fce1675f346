"""Opening an MLflow tracking store, and where its artifacts go."""

from __future__ import annotations

import logging

from mlflow.tracking import MlflowClient

from autolr import sqlite
from autolr.tracking._errors import StoreFullError, disk_full

__all__ = ["artifact_root_for", "known_artifact_uri", "open_client"]

logger = logging.getLogger(__name__)


def artifact_root_for(tracking_uri: str) -> str | None:
    """Artifacts sit beside an SQLite store (``mlruns/mlflow.db`` -> ``mlruns/artifacts``)."""
    path = sqlite.sqlite_path(tracking_uri)
    return None if path is None else (path.parent.resolve() / "artifacts").as_uri()


def open_client(tracking_uri: str) -> MlflowClient:
    """An MlflowClient; an SQLite store is prepared first (``autolr.sqlite``): MLflow creates a new
    database's tables check-then-act, so two processes opening a fresh store at once would both try."""
    path = sqlite.sqlite_path(tracking_uri)
    if path is None:
        return MlflowClient(tracking_uri=tracking_uri)
    try:
        with sqlite.prepared(path):
            return MlflowClient(tracking_uri=tracking_uri)  # creates and migrates the tables
    except Exception as exc:
        if disk_full(exc):  # one line naming the disk, not SQLAlchemy's page of SQL
            raise StoreFullError(tracking_uri, exc) from None
        raise


def known_artifact_uri(run_id: str, artifact_uri: str, tracking_uri: str) -> None:
    """Tell MLflow's client where a run it just created keeps its artifacts, as its own cache would
    after reading the run back (``log_text`` on the parent run otherwise reads the whole run, ~4 ms,
    to find its artifact folder). MLflow's internals: where they differ, the client reads the run."""
    try:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
        from mlflow.tracking._tracking_service import utils

        cache = utils._artifact_repos_cache
        if run_id not in cache and artifact_uri and "databricks" not in artifact_uri and not tracking_uri.startswith("databricks"):
            cache[run_id] = get_artifact_repository(artifact_uri, tracking_uri=tracking_uri)
    except Exception as exc:  # noqa: BLE001 - the client finds it itself
        logger.debug("no artifact repository cached for run %s: %s", run_id, exc)
