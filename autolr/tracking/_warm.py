"""The writer process's command, and a writer started ahead of need.

A writer process spends seconds importing (mlflow, SQLAlchemy, MLflow's store) before it can write;
a small study's first trial is shorter than that, so the first flush waited for the import. ``tune``
therefore starts one writer *warm* before its preflight (which itself takes seconds: the user's task is
built, one step is taken): a warm writer imports, then waits for its first message before it opens the
store, so input the preflight refuses still writes nothing. The tracker's first writer adopts it
(:func:`take`); one never adopted is ended (:func:`discard`, and at exit).

This module imports no mlflow: starting a warm writer costs the caller a fork and an exec.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import subprocess
import sys
from pathlib import Path

__all__ = ["WRITER_MODULE", "WAIT_FOR_WORK", "discard", "prestart", "take", "writer_command", "writer_env"]

WRITER_MODULE = "autolr.tracking._writer_process"
WAIT_FOR_WORK = "--wait-for-work"  # the writer opens its store on its first message, not at start

_warm: dict[tuple[str, bool], subprocess.Popen] = {}


def writer_command(tracking_uri: str, *, fast_path: bool = True) -> list[str]:
    return [sys.executable, "-m", WRITER_MODULE, tracking_uri, *([] if fast_path else ["--no-fast-path"])]


def writer_env() -> dict[str, str]:
    """The writer's environment: this autolr first on the path; MLflow's HTTP client gives up on a dead
    server after seconds, not minutes (the writer holds and retries itself), and prints no "View run"
    line per trial run."""
    env = dict(os.environ)
    package_parent = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    env.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    env.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    env.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    env["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    return env


def spawn(tracking_uri: str, *, fast_path: bool = True, wait_for_work: bool = False) -> subprocess.Popen:
    return subprocess.Popen(
        [*writer_command(tracking_uri, fast_path=fast_path), *([WAIT_FOR_WORK] if wait_for_work else [])],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        bufsize=0,
        env=writer_env(),
        start_new_session=True,  # a Ctrl-C meant for training must not kill the writer mid-commit
    )


def prestart(tracking_uri: str, *, fast_path: bool = True) -> None:
    """Start a warm writer for ``tracking_uri`` (one at most), unless subprocesses are not allowed here."""
    key = (tracking_uri, fast_path)
    if key in _warm:
        return
    with contextlib.suppress(OSError):  # the tracker starts its writer (or a thread) the usual way
        _warm[key] = spawn(tracking_uri, fast_path=fast_path, wait_for_work=True)


def take(tracking_uri: str, *, fast_path: bool = True) -> subprocess.Popen | None:
    """The warm writer for ``tracking_uri``, now the caller's, if one is there and still alive."""
    proc = _warm.pop((tracking_uri, fast_path), None)
    if proc is not None and proc.poll() is not None:
        _end(proc)
        return None
    return proc


def discard() -> None:
    """End every warm writer not adopted: closing its stdin tells it there is no work; it opened nothing."""
    while _warm:
        _end(_warm.popitem()[1])


def _end(proc: subprocess.Popen) -> None:
    for pipe in (proc.stdin, proc.stdout):
        with contextlib.suppress(OSError):
            pipe.close()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


atexit.register(discard)
