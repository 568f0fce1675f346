"""The training side of the writer: hands it messages, keeps each until the writer confirms it is in the
store, and replaces a writer that dies or hangs, so that nothing it was sent is lost.

Every message sent is journaled with a sequence number; the writer confirms (``Committed``) once all it
received is in the store, and the journal forgets that much. A writer process that dies (killed, out
of memory) is noticed at the next hand-over (its reply pipe closes); a new one is started (at most
``MAX_RESTARTS`` times, then the writer runs as a thread of this process) and sent, in order, the
creation of each run still open and every message not confirmed: a run the dead writer created is
adopted, a point it wrote is written again identically, which the store keeps once. A writer that makes
no progress for ``AUTOLR_TRACKING_WAIT_S`` seconds (default 10) while this process waits for it (a
tracking server that hangs) is ended, and what it had not confirmed goes to the spool for the next
invocation instead: waiting on the store never costs more than that.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from autolr.tracking._errors import redact, where_full
from autolr.tracking._links import ProcessLink, ThreadLink
from autolr.tracking._messages import (
    Barrier,
    BarrierDone,
    Committed,
    CreateRun,
    EndRun,
    FromWriter,
    LogPoints,
    PointsUnsent,
    PointsWritten,
    Progress,
    RunClosed,
    RunCreated,
    StoreDown,
    StoreUp,
    ToWriter,
    TrialState,
    WriterExited,
)
from autolr.tracking._writer import RETRY_S

__all__ = ["MAX_BACKLOG_POINTS", "MAX_RESTARTS", "WAIT_ENV", "WriterSupervisor", "wait_s"]

logger = logging.getLogger("autolr.tracking")

MAX_BACKLOG_POINTS = 1_000_000  # beyond this many points not handled yet, training waits for the writer
MAX_RESTARTS = 3  # writer processes started again after one died; then the writer is a thread of this process
WAIT_ENV = "AUTOLR_TRACKING_WAIT_S"
DEFAULT_WAIT_S = 10.0


def wait_s() -> float:
    """How long a wait on the writer lasts without progress before the store is given up for this
    invocation (``AUTOLR_TRACKING_WAIT_S``; an unreadable value counts as the default)."""
    try:
        value = float(os.environ.get(WAIT_ENV, DEFAULT_WAIT_S))
    except ValueError:
        return DEFAULT_WAIT_S
    return value if value > 0 else DEFAULT_WAIT_S


class WriterSupervisor:
    """One tracker's writer, kept alive; see the module docstring."""

    def __init__(self, tracking_uri: str, *, mode: str, fast_path: bool) -> None:
        self.tracking_uri, self.mode, self.fast_path = tracking_uri, mode, fast_path
        self.link: ProcessLink | ThreadLink | None = None
        self.store_down: str | None = None  # why the store cannot take writes, while it cannot
        self.run_ids: dict[int, str | None] = {}
        self.ended: dict[int, TrialState] = {}  # key -> final state, as sent
        self.closed_keys: set[int] = set()  # confirmed closed by the writer
        self.cond = threading.Condition()
        self._done: set[int] = set()
        self._tokens = iter(range(1 << 62))
        self._journal: collections.deque[tuple[int, ToWriter]] = collections.deque()  # (seq, msg) not confirmed
        self._creates: dict[int, tuple[int, CreateRun]] = {}  # runs not confirmed closed: their creation
        self._seq = self._confirmed = 0
        self._seq_base = self._skip = 0  # the link's n-th message is seq _seq_base + n - _skip
        self._sent_points = self._written_points = 0
        self._restarts = 0
        self._lost: WriterExited | None = None
        self._alive = self._ready = self._spool_only = self._warned_backlog = False
        self._heard = time.monotonic()
        self.on_reply_of: dict[type, Callable[[Any], None]] = {
            RunCreated: lambda m: self.run_ids.__setitem__(m.key, m.run_id),
            RunClosed: lambda m: self.closed_keys.add(m.key),
            PointsWritten: self._points_written,
            Progress: lambda _m: None,  # heard: that is all it says
            BarrierDone: lambda m: self._done.add(m.token),
            Committed: self._committed,
            WriterExited: self._exited,
            StoreDown: self._store_went_down,
            StoreUp: self._store_came_back,
            PointsUnsent: self._points_unsent,
        }

    # --- what the tracker calls ---------------------------------------------------------------------------

    def send(self, msg: ToWriter) -> None:
        if self.link is None:
            self.start()
        if isinstance(msg, LogPoints):
            self._sent_points += msg.points
            if self._sent_points - self._written_points > MAX_BACKLOG_POINTS:
                self._wait_for_backlog()
        elif isinstance(msg, EndRun):
            self.ended[msg.key] = msg.state
        with self.cond:
            self._seq += 1
            self._journal.append((self._seq, msg))
            if isinstance(msg, CreateRun):
                self._creates[msg.key] = (self._seq, msg)
        self.link.send(msg)
        if self._lost is not None:
            self._recover()

    def barrier(self, timeout_s: float) -> bool:
        """Wait until everything sent so far is written (or held, or spooled); False after ``timeout_s``."""
        token = next(self._tokens)
        self.send(Barrier(token))
        return self._wait(lambda: token in self._done, timeout_s, stall_s=wait_s())

    def start(self, *, spool_only: bool = False) -> None:
        in_process = spool_only or self.mode == "thread" or self._restarts > MAX_RESTARTS
        self._ready, self._alive, self._spool_only = False, True, spool_only
        if not in_process:
            try:
                self.link = ProcessLink(self.tracking_uri, self._on_reply, fast_path=self.fast_path)
                return
            except OSError as exc:  # no subprocess allowed here: the thread still keeps the store work batched
                logger.warning("could not start the MLflow writer process (%s); writing from a thread", exc)
        self.link = ThreadLink(self.tracking_uri, self._on_reply, fast_path=self.fast_path, spool_only=spool_only)

    def close(self) -> None:
        """Stop the writer once it wrote or spooled everything; a successor takes over from one that
        dies or does not stop in time (it hangs in a call to the store)."""
        while self.link is not None:
            clean = self.link.close(timeout_s=wait_s())
            if clean or self._spool_only:
                self.link = None
            elif self._lost is not None:
                self._recover()
            else:
                self._abandon(f"its writer did not stop within {wait_s():.0f} s")

    # --- replies ---------------------------------------------------------------------------------------------

    def _on_reply(self, msg: FromWriter) -> None:
        with self.cond:
            self._heard, self._ready = time.monotonic(), True
            self.on_reply_of[type(msg)](msg)
            self.cond.notify_all()

    def _points_written(self, msg: PointsWritten) -> None:
        self._written_points += msg.points

    def _committed(self, msg: Committed) -> None:
        seq = self._seq_base + max(0, msg.messages - self._skip)
        while self._journal and self._journal[0][0] <= seq:
            _, done = self._journal.popleft()
            if isinstance(done, EndRun):
                self._creates.pop(done.key, None)
        self._confirmed = max(self._confirmed, seq)

    def _exited(self, msg: WriterExited) -> None:
        if msg.clean:
            self._alive = False
        else:
            self._lost = msg

    def _store_went_down(self, msg: StoreDown) -> None:
        self.store_down = msg.reason
        if msg.disk_full:
            logger.error(
                "the disk of the MLflow tracking store %s is full (%s); tracking writes stop, training goes on, "
                "and the points are held, tried again every %.0f s and kept in the spool at exit",
                where_full(self.tracking_uri), msg.reason.removeprefix("disk full: "), RETRY_S,
            )  # fmt: skip
            return
        logger.error(
            "the MLflow tracking store %s stopped answering (%s); training goes on, and the points "
            "are held and sent again every %.0f s", redact(self.tracking_uri), msg.reason, RETRY_S,
        )  # fmt: skip

    def _store_came_back(self, _msg: StoreUp) -> None:
        self.store_down = None
        logger.warning("the MLflow tracking store %s answers again; the held points are written", redact(self.tracking_uri))

    def _points_unsent(self, msg: PointsUnsent) -> None:
        if not msg.kept_in:
            logger.error(
                "%d points of %d MLflow runs could not be written to %s nor kept on disk (the spool folder "
                "could not be written: see above); they are lost", msg.points, msg.runs, redact(self.tracking_uri),
            )  # fmt: skip
            return
        logger.error(
            "%d points of %d MLflow runs could not be written to %s; they wait in the spool %s, and the next "
            "`autolr tune` with this --tracking-uri writes them", msg.points, msg.runs, redact(self.tracking_uri), msg.kept_in,
        )  # fmt: skip

    # --- waiting ---------------------------------------------------------------------------------------------

    def _wait(self, predicate: Callable[[], bool], timeout_s: float | None, stall_s: float | None = None) -> bool:
        """Poll the writer until ``predicate``; False after ``timeout_s``. A writer that makes no progress
        for ``stall_s`` while its store is to blame is given up (see the module docstring)."""
        started = time.monotonic()
        deadline = None if timeout_s is None else started + timeout_s
        while True:
            if self._lost is not None:
                self._recover()
            with self.cond:
                if predicate():
                    return True
                if not self._alive or self.link is None:
                    return False
                silent_s = time.monotonic() - max(started, self._heard)
            if stall_s is not None and self._ready and not self._spool_only and silent_s > stall_s:
                self._abandon(f"it made no progress for {stall_s:.0f} s")
                continue
            left = 0.05 if deadline is None else min(0.05, deadline - time.monotonic())
            if left <= 0:
                return False
            self.link.poll(left)

    def _wait_for_backlog(self) -> None:
        if not self._warned_backlog:
            self._warned_backlog = True
            logger.warning("the MLflow writer is %d points behind; training waits for it", self._sent_points - self._written_points)
        self._wait(lambda: self._sent_points - self._written_points <= MAX_BACKLOG_POINTS // 2, None)

    # --- replacing a writer --------------------------------------------------------------------------------

    def _recover(self) -> None:
        """The writer died: a new one gets everything the dead one had not confirmed."""
        while self._lost is not None:
            lost, old, self._lost = self._lost, self.link, None
            old.close(timeout_s=1.0)
            self._restarts += 1
            self.start()
            points = self._replay()
            how = f"restarted it (pid {self.link.pid})" if isinstance(self.link, ProcessLink) else "writing from this process from now on"
            logger.error(
                "the MLflow writer (pid %d) died (%s); %s and sent it the %d points it had not confirmed: no point lost", old.pid, lost.how, how, points
            )

    def _abandon(self, why: str) -> None:
        """The writer hangs in a call to the store: end it; what it had not confirmed goes to the spool."""
        old = self.link
        old.kill()
        self.store_down = f"the store made no progress ({why})"
        self.start(spool_only=True)
        points = self._replay()
        logger.error(
            "the MLflow tracking store %s is given up for this invocation: %s; the %d points not written yet go "
            "to the spool", redact(self.tracking_uri), why.replace("it made", "the writer made"), points,
        )  # fmt: skip

    def _replay(self) -> int:
        """Send the new writer the creation of every open run and every message not confirmed, in order;
        returns how many points that carried."""
        with self.cond:
            adopted = [self._resumed(c) for seq, c in self._creates.values() if seq <= self._confirmed]
            journal = [self._resumed(m) if isinstance(m, CreateRun) else m for _, m in self._journal]
            self._seq_base, self._skip = self._confirmed, len(adopted)
            points = sum(m.points for m in journal if isinstance(m, LogPoints))
            self._written_points = self._sent_points - points
        for msg in adopted + journal:
            self.link.send(msg)
        return points

    def _resumed(self, msg: CreateRun) -> CreateRun:
        return dataclasses.replace(msg, resumed=True, run_uuid=self.run_ids.get(msg.key) or msg.run_uuid)
