"""What crosses from the training process to the writer and back: typed messages, one dataclass each.

As MLflow's ``utils/async_logging`` (a ``RunBatch`` and a status enum), a message is defined once here;
the sender builds it by keyword and the receiver dispatches on its type in one place
(``Writer.apply``, ``Tracker._on_reply``). A field added is added here. This module imports no mlflow,
so the training side can build messages before the writer has started.
"""

from __future__ import annotations

import dataclasses
import enum

__all__ = [
    "Barrier",
    "BarrierDone",
    "Committed",
    "CreateRun",
    "EndRun",
    "FromWriter",
    "LogPoints",
    "MetricsAt",
    "Point",
    "PointsUnsent",
    "PointsWritten",
    "Progress",
    "RunBatch",
    "RunClosed",
    "RunCreated",
    "RunEnd",
    "SetTags",
    "StepSeries",
    "StoreDown",
    "StoreUp",
    "TerminateRun",
    "ToWriter",
    "TrialState",
    "WriterExited",
]

Point = tuple[str, float, int, int]  # key, value, timestamp (ms), step: the order of mlflow's Metric


class TrialState(str, enum.Enum):
    """How a trial ended, as the trial run records it: the run's MLflow status, and the Optuna state
    its ``autolr.state`` tag carries (an interrupted trial is FAIL in Optuna, KILLED in MLflow)."""

    COMPLETE = "COMPLETE"
    PRUNED = "PRUNED"
    FAIL = "FAIL"
    KILLED = "KILLED"

    @property
    def run_status(self) -> str:
        return {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED", "KILLED": "KILLED"}[self.value]

    @property
    def optuna_state(self) -> str:
        return "FAIL" if self is TrialState.KILLED else self.value


# --- what a trial run buffers between two hand-overs ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StepSeries:
    """Per-step series of consecutive steps from ``first_step`` (the trainer's window)."""

    first_step: int
    timestamp_ms: int
    values: dict[str, list[float]]


@dataclasses.dataclass(frozen=True)
class MetricsAt:
    """Metrics of one step (per-layer statistics) or one epoch (validation)."""

    step: int
    timestamp_ms: int
    values: dict[str, float]


# --- training process -> writer ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CreateRun:
    """A new trial run; the writer creates it with its first points (``key``: the training side's handle).

    ``run_uuid``: the id the fast path gives the run (the training side draws it, so a writer that
    replaces a dead one can tell whether the run was created). ``resumed``: sent again to a new writer;
    it adopts the run ``run_uuid`` names when the store has it, and creates it otherwise.
    """

    key: int
    experiment_id: str
    run_name: str
    tags: dict[str, str]
    params: dict[str, str]
    start_ms: int
    run_uuid: str = ""
    resumed: bool = False


@dataclasses.dataclass(frozen=True)
class LogPoints:
    key: int
    items: list[StepSeries | MetricsAt]
    points: int  # how many points ``items`` hold: the training side's backlog counts them


@dataclasses.dataclass(frozen=True)
class SetTags:
    key: int
    tags: dict[str, str]


@dataclasses.dataclass(frozen=True)
class EndRun:
    """The trial's final state; the writer closes the run once its last points are committed."""

    key: int
    state: TrialState
    tags: dict[str, str]
    end_ms: int


@dataclasses.dataclass(frozen=True)
class TerminateRun:
    """A run of the training process itself (its parent run) to end while the store does not answer."""

    run_id: str
    status: str
    end_ms: int


@dataclasses.dataclass(frozen=True)
class Barrier:
    """Reply :class:`BarrierDone` once everything sent before is written (or held)."""

    token: int


ToWriter = CreateRun | LogPoints | SetTags | EndRun | TerminateRun | Barrier


# --- writer -> training process ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunCreated:
    key: int
    run_id: str | None  # None: the store refused the run (logged by the writer); the trial goes on untracked


@dataclasses.dataclass(frozen=True)
class RunClosed:
    key: int


@dataclasses.dataclass(frozen=True)
class PointsWritten:
    points: int  # committed, held for a retry, or refused: handled either way


@dataclasses.dataclass(frozen=True)
class BarrierDone:
    token: int


@dataclasses.dataclass(frozen=True)
class StoreDown:
    reason: str
    disk_full: bool = False  # the store's disk is full (rather than the store not answering)


@dataclasses.dataclass(frozen=True)
class StoreUp:
    pass


@dataclasses.dataclass(frozen=True)
class PointsUnsent:
    points: int
    runs: int
    kept_in: str


@dataclasses.dataclass(frozen=True)
class Progress:
    """A long write goes on (a store call succeeded): the writer is slow, not stuck."""


@dataclasses.dataclass(frozen=True)
class Committed:
    """The first ``messages`` messages this writer received are in the store (or refused by it): the
    training side may forget them. Also sent once at start-up (0): the writer is ready."""

    messages: int


@dataclasses.dataclass(frozen=True)
class WriterExited:
    """The writer stopped: ``clean`` after it wrote or spooled everything it was sent; not clean when
    its pipe closed without that (it died: ``how`` says how, e.g. "signal 9")."""

    clean: bool = True
    how: str = ""


FromWriter = RunCreated | RunClosed | PointsWritten | Progress | BarrierDone | Committed | StoreDown | StoreUp | PointsUnsent | WriterExited


# --- what the writer writes for one run in one go (and keeps in the spool when it cannot) ---------------


@dataclasses.dataclass(frozen=True)
class RunEnd:
    status: str  # MLflow's: FINISHED / FAILED / KILLED
    end_ms: int


@dataclasses.dataclass
class RunBatch:
    """A run's creation (when ``new_run``), its params, points and tags, and its end (when ``end``).

    Whoever writes part of it takes that part off, so a batch that failed half-way holds exactly what is
    left to write.
    """

    run_id: str | None
    new_run: CreateRun | None = None
    params: dict[str, str] = dataclasses.field(default_factory=dict)
    points: list[Point] = dataclasses.field(default_factory=list)
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    end: RunEnd | None = None

    def merge(self, later: RunBatch) -> None:
        """Append a later batch of the same run (held while the store does not answer)."""
        self.points.extend(later.points)
        self.tags.update(later.tags)
        self.params.update(later.params)
        self.end = later.end or self.end
        self.run_id = self.run_id or later.run_id
