"""Opening an MLflow tracking store, and where its artifacts go."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from autolr import sqlite
from autolr.tracking._errors import StoreFullError, disk_full

__all__ = ["artifact_root_for", "open_client"]


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
