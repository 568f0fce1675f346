"""One trial's run as the training loop sees it: points buffered in a list, handed to the writer in bulk.

Appending to a list is all a training step pays; the points leave as one :class:`LogPoints` message
once ``FLUSH_INTERVAL_S`` has passed since the last hand-over (checked as points are added), at
:meth:`TrialRun.flush` (the trial's watcher calls it at the start of the last epoch and after the last
step) and at the end. Not at every epoch end: with short epochs that was a message (a pickle, a pipe
write, the writer's replies to read) per epoch, ~1.5 ms of a 20-epoch digits trial of ~230 ms measured
here (``bench/tracking_overhead.py``), for validation metrics that now reach the store 0.1 s later at
most. The interval sets how often the writer commits (each commit ~1 ms of its CPU: 0.1 s against
0.05 s took its CPU per digits trial from ~20 to ~15 ms); what is left to write once a trial ends is
its last epoch's points.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from autolr import keys
from autolr.tracking._messages import (
    EndRun,
    LogPoints,
    MetricsAt,
    SetTags,
    StepSeries,
    TrialState,
)

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11

    from autolr.tracking._tracker import Tracker

__all__ = ["FLUSH_INTERVAL_S", "TrialRun"]

FLUSH_INTERVAL_S = 0.1  # points wait at most this long in the training process
ERROR_LIMIT = 500  # characters of an error kept in the ``autolr.error`` tag


def now_ms() -> int:
    return int(time.time() * 1000)


class TrialRun:
    """One trial's run: buffers points, hands them to the writer, always ends in a final state.

    Use as a context manager; call :meth:`end` with the trial's state before leaving it, or the state is
    taken from how the block ended (KeyboardInterrupt -> KILLED, any other exception -> FAIL).
    """

    active = True  # it records (a NullTrialRun does not)

    def __init__(self, tracker: Tracker, key: int) -> None:
        self.tracker = tracker
        self.key = key
        self._items: list[StepSeries | MetricsAt] = []
        self._points = 0
        self._last_send = time.monotonic()
        self._state: TrialState | None = None

    @property
    def run_id(self) -> str | None:
        """The MLflow run id; a barrier (the writer creates a run with its first points): avoid in loops."""
        return self.tracker.run_id(self.key)

    def log_steps(self, first_step: int, values: Mapping[str, Sequence[float]]) -> None:
        """Per-step series of consecutive steps from ``first_step`` (the trainer's window)."""
        self._items.append(StepSeries(first_step, now_ms(), dict(values)))
        self._points += sum(len(v) for v in values.values())
        self._flush_if_due()

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        self._items.append(MetricsAt(step, now_ms(), dict(metrics)))
        self._points += len(metrics)
        self._flush_if_due()

    def _flush_if_due(self) -> None:
        if time.monotonic() - self._last_send >= FLUSH_INTERVAL_S:
            self.flush()

    def flush(self) -> None:
        """Hand the buffered points to the writer (returns at once; :meth:`Tracker.flush` waits)."""
        self._last_send = time.monotonic()
        if not self._items:
            return
        items, points = self._items, self._points
        self._items, self._points = [], 0
        self.tracker._send(LogPoints(self.key, items, points))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.tracker._send(SetTags(self.key, {k: str(v) for k, v in tags.items()}))

    def end(self, state: str, tags: Mapping[str, Any] | None = None) -> None:
        """Record the trial's final state (COMPLETE, PRUNED, FAIL or KILLED); the writer closes the run
        after its last points are committed."""
        if self._state is not None:
            return
        if state not in TrialState.__members__:
            raise ValueError(f"state: expected one of {sorted(TrialState.__members__)}, got {state!r}")
        self._state = TrialState(state)
        self.flush()
        self.tracker._send(EndRun(self.key, self._state, {k: str(v) for k, v in (tags or {}).items()}, now_ms()))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.end(TrialState.COMPLETE.value)
        elif issubclass(exc_type, KeyboardInterrupt):
            self.end(TrialState.KILLED.value, {keys.ERROR: "interrupted"})
        else:
            self.end(TrialState.FAIL.value, {keys.ERROR: f"{exc_type.__name__}: {exc}"[:ERROR_LIMIT]})
