"""Shared fixtures: isolated stores per test, and the PostgreSQL server when it is there."""

from __future__ import annotations

import os
import textwrap
import uuid
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)  # small models on 2 cores: one thread per process is fastest
# No plot job after each tuned study (a detached process of about 8 CPU-seconds each, racing the tests
# after it for the 2 cores); every process a test starts inherits this. Tests of the plots ask for them
# with the `plots` fixture. `AUTOLR_PLOTS=1 python -m pytest ...` runs the suite with every job, as before.
os.environ.setdefault("AUTOLR_PLOTS", "0")

POSTGRES_URL = os.environ.get("AUTOLR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test, whatever an earlier one left; the setting is put back after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def plots(monkeypatch) -> None:
    """The study's plots drawn after each invocation, as outside the test suite."""
    monkeypatch.setenv("AUTOLR_PLOTS", "1")


@pytest.fixture
def stores(tmp_path: Path) -> dict[str, str]:
    """A private Optuna storage and MLflow store for one test."""
    return {
        "storage": f"sqlite:///{tmp_path / 'optuna.db'}",
        "tracking_uri": f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
    }


@pytest.fixture
def write_study(tmp_path: Path):
    """Write a study file from YAML text; returns its path."""

    def write(text: str, name: str = "study.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write


def _postgres_reason() -> str | None:
    try:
        import sqlalchemy
    except ImportError:
        return "sqlalchemy missing"
    try:
        engine = sqlalchemy.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("select 1"))
        engine.dispose()
    except Exception as exc:  # noqa: BLE001
        return f"PostgreSQL not reachable at {POSTGRES_URL}: {type(exc).__name__}"
    return None


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The test database's URL; skips (with the reason) when PostgreSQL is absent."""
    reason = _postgres_reason()
    if reason:
        if os.environ.get("AUTOLR_REQUIRE_POSTGRES"):
            pytest.fail(f"AUTOLR_REQUIRE_POSTGRES is set but {reason}")
        pytest.skip(reason)
    return POSTGRES_URL


@pytest.fixture
def unique_name() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def pytest_collection_modifyitems(config, items) -> None:
    """Under pytest-xdist (``-n 3 --dist loadgroup``), the tests that use PostgreSQL run one after another
    in one worker: each starts processes with connection pools of their own (autolr workers, an MLflow
    server), and run side by side they can exceed the server's ``max_connections`` (100 by default)."""
    for item in items:
        if "postgres_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("postgres"))


@pytest.fixture(autouse=True)
def _close_postgres_connections(request):
    """After a PostgreSQL test, collect the storages it left (Optuna's ``RDBStorage`` sits in reference
    cycles, so its pool's idle connections stay open until the cyclic collector runs): one worker runs
    every PostgreSQL test, and their leftovers together once reached 94 of the server's 100 connections."""
    yield
    if "postgres_url" in request.fixturenames:
        import gc

        gc.collect()
