"""The per-step scheduler that drives a torch optimizer along one of :mod:`autolr.schedules`.

It is a ``torch.optim.lr_scheduler.LRScheduler``: call ``step()`` after every ``optimizer.step()``,
and, for the ``plateau`` schedule, ``report(metric)`` once per epoch. The trainer and
``autolr.load_best(...).build_scheduler`` use this same class, so a user's script follows exactly the
learning-rate curve that was tuned.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from autolr.params import WARMUP, resolve
from autolr.schedules import SCHEDULES, PlateauState, lr_at, warmup_steps_for

__all__ = ["StepScheduler"]


class StepScheduler(torch.optim.lr_scheduler.LRScheduler):
    """Per-step learning-rate schedule with optional linear warmup.

    Args:
        optimizer: built at the peak rate (its ``lr`` is the peak).
        total_steps: optimisation steps in the whole run.
        schedule: a name in :data:`autolr.schedules.SCHEDULES`.
        params: the schedule's hyperparameters (missing ones take their defaults).
        warmup: fraction of ``total_steps`` spent warming up linearly.
        mode: ``min`` or ``max``, the direction of the metric given to :meth:`report` (plateau only).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        total_steps: int,
        schedule: str,
        params: Mapping[str, Any] | None = None,
        warmup: float = 0.0,
        mode: str = "min",
    ) -> None:
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; expected one of {sorted(SCHEDULES)}")
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        WARMUP.check(warmup, owner="StepScheduler")
        self.schedule = schedule
        self.params = resolve(SCHEDULES[schedule].params, params, owner=f"schedule {schedule!r}")
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps_for(warmup, total_steps)
        self.plateau = PlateauState(patience=self.params["patience"], mode=mode) if schedule == "plateau" else None
        self.reports = 0  # calls of report(), for autolr.Trial to tell whether the loop reported itself
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        return [self.lr_at(self.last_epoch, base) for base in self.base_lrs]

    def lr_at(self, step: int, peak_lr: float) -> float:
        reductions = self.plateau.reductions if self.plateau else 0
        return lr_at(
            step,
            total_steps=self.total_steps,
            peak_lr=peak_lr,
            schedule=self.schedule,
            params=self.params,
            warmup_steps=self.warmup_steps,
            reductions=reductions,
        )

    def state_dict(self) -> dict[str, Any]:
        """torch's, less the count of :meth:`report` calls (a count of this process's calls, not state)."""
        state = super().state_dict()
        state.pop("reports", None)
        return state

    def report(self, metric: float) -> None:
        """Give the epoch's validation metric; only ``plateau`` uses it. A reduction applies at once,
        to the next optimizer step, as with torch's ReduceLROnPlateau."""
        self.reports += 1
        if self.plateau is None:
            return
        before = self.plateau.reductions
        if self.plateau.update(float(metric)) != before:
            for group, base in zip(self.optimizer.param_groups, self.base_lrs):
                group["lr"] = self.lr_at(self.last_epoch, base)
            self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
