"""SQLite files shared by several processes: the one setup both stores (Optuna's and MLflow's) use.

A fresh SQLite store is created check-then-act by both Optuna and MLflow, so two processes opening
it at the same moment would both create its tables and one would fail ("table ... already exists").
:func:`prepared` creates the folder, takes an inter-process lock on ``<file>.lock`` (the ``filelock``
package: ``flock`` on POSIX, ``LockFileEx`` on Windows) and switches the file to WAL, in which readers
(``autolr show``, ``autolr ui``) never block the writer; the mode persists in the file.

WAL keeps recent commits in ``<file>-wal`` until a checkpoint copies them into the file:
:func:`checkpoint_engine` (a PASSIVE checkpoint, which waits for no one) after each unit of work worth
keeping and :func:`checkpoint_at_exit` make the ``.db`` file alone hold the store, as a user who copies
it expects. A store in a folder that cannot be written (a read-only mount, a shared archive) is read
as it is (:func:`read_only_connector`): no lock file, no WAL switch, no ``-shm``.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import filelock

__all__ = [
    "SQLITE_PREFIX",
    "BackgroundCheckpoint",
    "checkpoint_at_exit",
    "checkpoint_engine",
    "foreign",
    "prepared",
    "read_only_connector",
    "sqlite_path",
    "writable",
]

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


def writable(path: Path) -> bool:
    """Whether this process may write the store: the file and its folder (for the ``-wal``, ``-shm`` and
    lock files). False on a read-only mount for anyone, root included."""
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)


def _read_only_uri(path: Path) -> str:
    # Without a -wal file the .db holds everything, and in a folder nobody can write nobody can add one:
    # `immutable` then reads without the -shm a WAL reader would otherwise have to create.
    wal = path.with_name(path.name + "-wal")
    mode = "mode=ro" if wal.exists() or os.access(path.parent, os.W_OK) else "immutable=1"
    return f"{path.resolve().as_uri()}?{mode}"


def read_only_connector(path: Path) -> Callable[[], sqlite3.Connection]:
    """A connection factory (SQLAlchemy's ``creator``) that opens ``path`` read-only."""
    uri = _read_only_uri(path)
    return lambda: sqlite3.connect(uri, uri=True, check_same_thread=False)


def foreign(path: Path) -> str | None:
    """Why the file at ``path`` cannot be an Optuna storage, or None: missing, empty, or holding
    Optuna's tables. (Whether those are of a version this Optuna reads, Optuna itself checks.)"""
    if not path.exists() or path.stat().st_size == 0:
        return None
    try:
        with contextlib.closing(sqlite3.connect(_read_only_uri(path), uri=True, timeout=30)) as conn:
            tables = sorted(row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
    except sqlite3.DatabaseError as exc:
        return f"not an SQLite database: {exc}"
    if not tables or "studies" in tables:
        return None
    return f"it holds the tables {', '.join(tables[:6])}{', ...' if len(tables) > 6 else ''}"


def commit_without_fsync(engine: Any) -> None:
    """``synchronous=NORMAL`` on every connection of ``engine`` (an SQLite file in WAL mode): a commit
    is then one write, not a write and an fsync (about 4 ms on this project's machines, and a study
    commits hundreds of times: each epoch's report, each trial's attrs). A commit still survives any
    crash or kill of the processes; an OS crash or power loss can lose the last ones, though not a
    finished trial's: the checkpoint after each finished trial syncs the ``-wal`` and the file."""
    import sqlalchemy

    sqlalchemy.event.listen(engine, "connect", lambda dbapi_connection, _record: dbapi_connection.execute("PRAGMA synchronous=NORMAL"))
    engine.dispose()  # the connections opened before the listener (table checks) are replaced by new ones


def checkpoint_engine(engine: Any) -> None:
    """Copy what the ``-wal`` holds into the database file, as far as no reader holds it (PASSIVE: it
    waits for no one, and a later checkpoint copies the rest)."""
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
    except Exception as exc:  # noqa: BLE001 - the commit is safe in the -wal; the next checkpoint copies it
        logger.debug("WAL checkpoint of %s failed: %s", engine.url, exc)


_CHECKPOINTING = threading.Lock()  # held by a background checkpoint, so the exit's waits for it


class BackgroundCheckpoint:
    """:func:`checkpoint_engine` in a daemon thread: :meth:`request` returns at once (the checkpoint is
    where a commit without fsync reaches the disk, ~1 ms here and more on a slower disk, which the next
    trial's start no longer waits for). Requests made while one runs are served by one more checkpoint;
    SQLite runs the checkpoint without the GIL, beside the caller's next statements (PASSIVE blocks no
    writer). At a clean exit :func:`checkpoint_at_exit` waits for a checkpoint under way, then copies
    whatever is left. The thread holds the engine weakly and ends once the engine is gone, so a storage
    dropped by its owner (a notebook running study after study) leaves no thread or open file behind."""

    IDLE_S = 1.0  # how often an idle thread looks whether its engine is still there

    def __init__(self, engine: Any) -> None:
        self._engine = weakref.ref(engine)
        self._wanted = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def request(self) -> None:
        self._wanted.set()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="autolr-wal-checkpoint", daemon=True)
                self._thread.start()

    def _serve(self) -> None:
        while True:
            if not self._wanted.wait(self.IDLE_S):
                if self._engine() is None:
                    return
                continue
            self._wanted.clear()
            with _CHECKPOINTING:  # the engine is taken only once the lock is ours: a thread waiting on another storage's checkpoint pins nothing
                engine = self._engine()
                if engine is None:
                    return
                checkpoint_engine(engine)
            del engine  # not held while waiting


_AT_EXIT: set[Path] = set()


def checkpoint_at_exit(path: Path) -> None:
    """At this process's clean exit, copy the ``-wal`` of ``path`` into it and empty the ``-wal``."""
    if not _AT_EXIT:
        atexit.register(_checkpoint_all)
    _AT_EXIT.add(path)


def _checkpoint_all() -> None:
    with _CHECKPOINTING:  # a background checkpoint of this process would make SQLite skip this one
        for path in sorted(p for p in _AT_EXIT if p.exists()):
            try:
                with contextlib.closing(sqlite3.connect(path, timeout=1)) as conn:
                    busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                if busy:  # another process reads or writes: its own exit checkpoints
                    logger.debug("WAL checkpoint of %s at exit left part of the -wal (the file is busy)", path)
            except sqlite3.Error as exc:  # another process is writing: its own exit checkpoints
                logger.debug("WAL checkpoint of %s at exit failed: %s", path, exc)
