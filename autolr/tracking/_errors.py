"""Which store errors mean "the store cannot take writes now" (hold and retry) rather than "it refused
this": the store did not answer, or its disk is full. Both are said in one line, never a traceback."""

from __future__ import annotations

import errno
import logging
import os
import re
import urllib.parse
from pathlib import Path

from autolr import sqlite

__all__ = ["StoreFullError", "describe", "disk_full", "quiet_store_errors", "redact", "unreachable", "where_full"]

_GATEWAY_DOWN = (502, 503, 504)
# SQLite's SQLITE_FULL, PostgreSQL's disk_full (SQLSTATE 53100) and "could not extend file", the OS's ENOSPC
_FULL = re.compile(r"database or disk is full|No space left on device|could not extend file|\b53100\b|DiskFull", re.IGNORECASE)


class StoreFullError(OSError, RuntimeError):
    """The MLflow tracking store's disk is full: raised by the tracker's own (synchronous) writes, with a
    one-line message naming the store and the disk, so a caller can print it as it is. An OSError
    (errno ENOSPC) and a RuntimeError: the CLI prints it as one line, exit 1, as it does the Optuna
    storage's ``StorageFull``."""

    def __init__(self, tracking_uri: str, cause: BaseException) -> None:
        super().__init__(
            errno.ENOSPC,
            f"the disk of the MLflow tracking store {where_full(tracking_uri)} is full ({_short(cause)}); free space there, "
            "then re-run: the next autolr tune writes what was kept in the spool",
        )

    def __str__(self) -> str:
        return self.strerror


def unreachable(exc: BaseException | None) -> bool:
    """Whether an error (or one it was raised from) says the store cannot take writes now, as opposed to
    refusing what it was sent: connection errors and timeouts, a gateway's 502/503/504, an SQLite file
    that is locked or cannot be opened, a full disk."""
    return _in_chain(exc, lambda e: _no_answer(e) or _full(e))


def disk_full(exc: BaseException | None) -> bool:
    """Whether an error (or one it was raised from) says the store's disk is full."""
    return _in_chain(exc, _full)


def _in_chain(exc: BaseException | None, test) -> bool:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if test(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    return _FULL.search(f"{type(exc).__name__} {exc}") is not None


def _no_answer(exc: BaseException) -> bool:
    kind = f"{type(exc).__module__}.{type(exc).__name__}"
    if isinstance(exc, (ConnectionError, TimeoutError)) or kind.startswith(("requests.exceptions.", "urllib3.exceptions.")):
        return True
    if kind in ("sqlalchemy.exc.OperationalError", "sqlite3.OperationalError"):
        return re.search(r"locked|unable to open|disk I/O", str(exc)) is not None
    status = getattr(exc, "get_http_status_code", None)
    return callable(status) and type(exc).__name__ == "RestException" and status() in _GATEWAY_DOWN


def describe(exc: BaseException) -> str:
    """One line, at most 300 characters: ``TypeName: message`` (for a full disk: what the disk said)."""
    if disk_full(exc):
        return f"disk full: {_short(exc)}"
    return f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]


def _short(exc: BaseException) -> str:
    """The words of the innermost full-disk error: "database or disk is full", "[Errno 28] No space ..."."""
    seen: set[int] = set()
    found = exc
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if _full(exc):
            found = exc
        exc = exc.__cause__ or exc.__context__
    match = _FULL.search(str(found))
    return match.group(0) if match and not isinstance(found, OSError) else str(found).split("\n")[0][:200]


def where_full(tracking_uri: str) -> str:
    """The store as a user finds it on disk: an SQLite file with the filesystem it lives on."""
    path = sqlite.sqlite_path(tracking_uri)
    if path is None:
        return redact(tracking_uri)
    return f"{path} (on the filesystem mounted at {mount_point(path)})"


def mount_point(path: Path) -> Path:
    """The mount point of the filesystem that holds ``path`` (or would hold it)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    while not os.path.ismount(path):
        path = path.parent
    return path


def quiet_store_errors() -> None:
    """MLflow logs a traceback for each database error it then raises; autolr says each in one line.
    Its INFO lines on creating the store's tables ("Creating initial MLflow database tables...") are
    dropped too: the store is autolr's to set up, and the Python API printed them into notebooks."""
    logging.getLogger("mlflow.store.db.utils").addFilter(_not_reported_by_autolr)


def _not_reported_by_autolr(record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    return record.levelno >= logging.WARNING and not unreachable(exc)


def redact(uri: str) -> str:
    """A URI as it may be printed: without a password."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
