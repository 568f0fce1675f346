"""How the training process reaches its writer: a child process (default) or a thread.

Both take messages with ``send``, move bytes with ``poll`` and hand replies to ``on_reply`` from the
calling thread, and ``close`` delivers what is pending before the writer stops. A writer process that
dies is noticed at once (its reply pipe closes: the next ``send`` or ``poll`` reads EOF) and reported
as ``WriterExited(clean=False)``; ``kill`` ends one that hangs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import queue
import select
import subprocess
import threading
import time
from collections.abc import Callable

from autolr.tracking._messages import FromWriter, ToWriter, WriterExited
from autolr.tracking._warm import spawn, take
from autolr.tracking._writer import STOP, serve

__all__ = ["ProcessLink", "ThreadLink"]

logger = logging.getLogger(__name__)

OnReply = Callable[[FromWriter], None]


class ThreadLink:
    """The writer as a thread of this process (the SQLAlchemy work then competes for the GIL).

    ``spool_only``: a writer that never touches the store, for a store that hung (see ``Writer``).
    """

    def __init__(self, tracking_uri: str, on_reply: OnReply, *, fast_path: bool = True, spool_only: bool = False) -> None:
        self.inbox: queue.Queue = queue.Queue()
        self.replied = threading.Event()
        self.pid = os.getpid()
        self.given_up = threading.Event()

        def reply(msg: FromWriter) -> None:
            if not self.given_up.is_set():  # a thread left hanging in a store call speaks for nobody
                on_reply(msg)
                self.replied.set()

        kwargs = {"fast_path": fast_path, "spool_only": spool_only, "given_up": self.given_up}
        self.thread = threading.Thread(target=serve, args=(tracking_uri, self.inbox, reply), kwargs=kwargs, name="autolr-mlflow-writer", daemon=True)
        self.thread.start()

    def kill(self) -> None:
        """A thread cannot be stopped: it is left to its store call, and then writes nothing more."""
        self.given_up.set()

    def send(self, msg: ToWriter) -> None:
        self.inbox.put(msg)

    def poll(self, timeout_s: float) -> None:
        self.replied.wait(timeout_s)
        self.replied.clear()

    def close(self, timeout_s: float) -> bool:
        """Whether the writer stopped cleanly within ``timeout_s``."""
        self.inbox.put(STOP)
        self.thread.join(timeout_s)
        return not self.thread.is_alive()


class ProcessLink:
    """The writer as a child process: pickled messages to its stdin, length-prefixed replies from its
    stdout, both pipes non-blocking and served from the calling thread.

    Why no helper threads here: a thread woken to feed the pipe or read a reply needs the GIL, and the
    training thread hands the GIL back and forth at every torch op; under CPU contention each handoff
    can stall training for a scheduler tick. Writing a few kB to a pipe every 0.1 s costs less.
    """

    def __init__(self, tracking_uri: str, on_reply: OnReply, *, fast_path: bool = True) -> None:
        self.proc = take(tracking_uri, fast_path=fast_path) or spawn(tracking_uri, fast_path=fast_path)
        self.to_writer, self.from_writer = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        os.set_blocking(self.to_writer, False)
        os.set_blocking(self.from_writer, False)
        self.on_reply = on_reply
        self.outgoing = bytearray()  # bytes the pipe has not taken yet
        self.incoming = bytearray()  # reply bytes not parsed yet
        self.alive = True
        self.exited = False  # the writer said it stopped (WriterExited) before its pipe closed
        self.pid = self.proc.pid

    def kill(self) -> None:
        """End a writer that hangs (in a call to a store that does not answer), quietly."""
        self.alive = False
        with contextlib.suppress(OSError):
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                pipe.close()

    def send(self, msg: ToWriter) -> None:
        if not self.alive:
            return
        self.outgoing += pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        self._pump()
        self._drain()

    def poll(self, timeout_s: float) -> None:
        """Move bytes both ways, waiting up to ``timeout_s`` for the writer to answer or take more."""
        if not self.alive:
            return
        with contextlib.suppress(OSError, ValueError):
            select.select([self.from_writer], [self.to_writer] if self.outgoing else [], [], timeout_s)
        self._pump()
        self._drain()

    def close(self, timeout_s: float) -> bool:
        """Deliver what is pending, then EOF: the writer finishes, closes what is open, and exits.
        Whether it said it stopped cleanly (else it died, or hung and was killed)."""
        deadline = time.monotonic() + timeout_s
        while self.outgoing and self.alive and time.monotonic() < deadline:
            self.poll(0.1)
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        while self.alive and not self.exited and time.monotonic() < deadline:
            self.poll(0.1)
        if not self.exited:  # once it said so, everything is in the store: its interpreter's exit is not waited for
            self._wait_or_kill(deadline)
        with contextlib.suppress(OSError):
            self.proc.stdout.close()
        return self.exited

    def _wait_or_kill(self, deadline: float) -> None:
        try:
            self.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()  # it hangs in a store call; what it had not confirmed goes to a successor
            self.proc.wait()

    def _pump(self) -> None:
        while self.outgoing and self.alive:
            try:
                written = os.write(self.to_writer, self.outgoing)
            except BlockingIOError:  # the writer is busy; the rest goes with a later send or poll
                return
            except OSError:  # it died: the training side sends what it had not confirmed to its successor
                self._lost()
                return
            del self.outgoing[:written]

    def _drain(self) -> None:
        while self.alive:
            try:
                chunk = os.read(self.from_writer, 1 << 16)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                self._lost()
                break
            self.incoming += chunk
        while len(self.incoming) >= 4:
            size = int.from_bytes(self.incoming[:4], "big")
            if len(self.incoming) < 4 + size:
                break
            msg = pickle.loads(self.incoming[4 : 4 + size])
            del self.incoming[: 4 + size]
            self.exited = self.exited or isinstance(msg, WriterExited)
            self.on_reply(msg)

    def _lost(self) -> None:
        if self.alive:
            self.alive = False
            if not self.exited:
                self.on_reply(WriterExited(clean=False, how=self._how()))

    def _how(self) -> str:
        """How the process ended: "signal 9", "exit code 1" (it closed its pipe just before)."""
        try:
            code = self.proc.wait(5.0)
        except subprocess.TimeoutExpired:
            return "closed its pipe"
        return f"signal {-code}" if code < 0 else f"exit code {code}"
