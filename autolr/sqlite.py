"""SQLite files shared by several processes: the one setup both stores (Optuna's and MLflow's) use.

A fresh SQLite store is created check-then-act by both Optuna and MLflow, so two processes opening
it at the same moment would both create its tables and one would fail ("table ... already exists").
:func:`prepared` creates the folder, takes an inter-process lock on ``<file>.lock`` (the ``filelock``
package: ``flock`` on POSIX, ``LockFileEx`` on Windows) and switches the file to WAL, in which readers
(``autolr show``, ``autolr ui``) never block the writer; the mode persists in the file.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import filelock

__all__ = ["SQLITE_PREFIX", "prepared", "sqlite_path"]

logger = logging.getLogger(__name__)

SQLITE_PREFIX = "sqlite:///"
LOCK_TIMEOUT_S = 300  # as long as a writer waits for the database's own lock


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL, or None for any other URL."""
    return Path(url[len(SQLITE_PREFIX) :]) if url.startswith(SQLITE_PREFIX) else None


@contextlib.contextmanager
def prepared(path: Path) -> Iterator[None]:
    """Hold the store's creation lock, with its folder made and the file in WAL mode, for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(f"{path}.lock", timeout=LOCK_TIMEOUT_S):
        _use_wal(path)
        yield


def _use_wal(path: Path) -> None:
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error as exc:  # e.g. a read-only store: the store's own open says what is wrong
        logger.warning("could not switch %s to WAL: %s", path, exc)
