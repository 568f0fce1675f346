"""Which store errors mean "the store did not answer" (hold and retry) rather than "it refused this"."""

from __future__ import annotations

import re
import urllib.parse

__all__ = ["describe", "redact", "unreachable"]

_GATEWAY_DOWN = (502, 503, 504)


def unreachable(exc: BaseException | None) -> bool:
    """Whether an error (or one it was raised from) says the store did not answer, as opposed to
    refusing what it was sent: connection errors and timeouts, a gateway's 502/503/504, an SQLite file
    that is locked or cannot be opened."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if _no_answer(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _no_answer(exc: BaseException) -> bool:
    kind = f"{type(exc).__module__}.{type(exc).__name__}"
    if isinstance(exc, (ConnectionError, TimeoutError)) or kind.startswith(("requests.exceptions.", "urllib3.exceptions.")):
        return True
    if kind in ("sqlalchemy.exc.OperationalError", "sqlite3.OperationalError"):
        return re.search(r"locked|unable to open|disk I/O", str(exc)) is not None
    status = getattr(exc, "get_http_status_code", None)
    return callable(status) and type(exc).__name__ == "RestException" and status() in _GATEWAY_DOWN


def describe(exc: BaseException) -> str:
    """One line, at most 300 characters: ``TypeName: message``."""
    return f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]


def redact(uri: str) -> str:
    """A URI as it may be printed: without a password."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
