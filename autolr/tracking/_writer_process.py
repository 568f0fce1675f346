"""The writer process: ``python -m autolr.tracking._writer_process TRACKING_URI [--no-fast-path] [--wait-for-work]``.

Messages arrive pickled on stdin, replies leave length-prefixed on stdout; :func:`autolr.tracking._writer.serve`
does the work. It imports mlflow and no torch.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import sys
import threading

from autolr.tracking._errors import quiet_store_errors
from autolr.tracking._messages import FromWriter
from autolr.tracking._warm import WAIT_FOR_WORK
from autolr.tracking._writer import STOP, Reply, serve

__all__ = ["main"]


def main(argv: list[str]) -> None:
    """Entry point of the writer process: messages on stdin, replies on the original stdout."""
    tracking_uri, fast_path = argv[0], "--no-fast-path" not in argv[1:]
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print from a library goes to stderr, not into the reply stream
    logging.basicConfig(level=logging.WARNING, format="autolr writer %(levelname)s %(name)s: %(message)s")
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.ERROR)  # its "Retrying ..." per call: the StoreDown line says it once
    quiet_store_errors()
    _commit_without_fsync(tracking_uri)
    inbox: queue.Queue = queue.Queue()
    threading.Thread(target=_read_messages, args=(sys.stdin.buffer, inbox), daemon=True).start()
    if WAIT_FOR_WORK in argv[1:] and not _work_arrives(inbox):
        return  # a warm writer nobody adopted (the preflight refused the input): it opened nothing
    serve(tracking_uri, inbox, _replier(replies), fast_path=fast_path)


def _work_arrives(inbox: queue.Queue) -> bool:
    """Wait for the first message (left in ``inbox``); False when the pipe closes first."""
    with inbox.not_empty:
        while not inbox.queue:
            inbox.not_empty.wait()
        return inbox.queue[0] is not STOP


def _replier(replies) -> Reply:
    gone = False

    def reply(msg: FromWriter) -> None:
        nonlocal gone
        if gone:
            return
        data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            replies.write(len(data).to_bytes(4, "big") + data)
            replies.flush()
        except OSError:  # the training process is gone: go on closing its runs, quietly
            gone = True

    return reply


def _read_messages(pipe, inbox: queue.Queue) -> None:
    try:
        while True:
            inbox.put(pickle.load(pipe))
    except Exception:  # noqa: BLE001 - EOF: stopped, or the training process is gone
        inbox.put(STOP)


def _commit_without_fsync(tracking_uri: str) -> None:
    """WAL + synchronous=NORMAL on this process's SQLite connections (this process holds no others):
    a commit survives any crash of the processes; only an OS crash can lose the last ones."""
    if not tracking_uri.startswith("sqlite:"):
        return
    import sqlalchemy

    @sqlalchemy.event.listens_for(sqlalchemy.engine.Engine, "connect")
    def _pragmas(dbapi_connection, _record) -> None:
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")
        dbapi_connection.execute("PRAGMA busy_timeout=60000")  # other writers (workers, the UI) share the file


if __name__ == "__main__":
    from autolr.workers import exit_without_teardown

    main(sys.argv[1:])
    exit_without_teardown(0)  # its work is committed and replied: ~2 s of freeing MLflow's objects would only hold a core
