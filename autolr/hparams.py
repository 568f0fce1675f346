"""The configuration of one training run: optimizer, peak lr, schedule, warmup and their parameters.

Its flat form (``{"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "schedule": "cosine", ...}``) is
what MLflow params and exports hold; optimizer and schedule parameter names never collide, so the
flat form maps back without prefixes. The objective and :func:`autolr.load_best` build the optimizer
and scheduler through this one class, so a user's script rebuilds exactly what was tuned.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from autolr.optimizers import OPTIMIZERS, build_optimizer
from autolr.params import LR, WARMUP, resolve
from autolr.scheduler import StepScheduler
from autolr.schedules import SCHEDULES

__all__ = ["RunConfig"]

_RESERVED = ("optimizer", "lr", "schedule", "warmup")


def _check_names(optimizer: str, schedule: str) -> None:
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer: expected one of {sorted(OPTIMIZERS)}, got {optimizer!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule: expected one of {sorted(SCHEDULES)}, got {schedule!r}")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    optimizer: str
    lr: float
    schedule: str
    warmup: float = 0.0
    optimizer_params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    schedule_params: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_names(self.optimizer, self.schedule)
        LR.check(self.lr, owner="params")
        WARMUP.check(self.warmup, owner="params")
        self.flat()  # every optimizer and schedule parameter within its declared bounds, now, not at the first build

    def flat(self) -> dict[str, Any]:
        """Every value the run used, defaults included, under flat names."""
        flat: dict[str, Any] = {"optimizer": self.optimizer, "lr": float(self.lr), "schedule": self.schedule, "warmup": float(self.warmup)}
        flat.update(resolve(OPTIMIZERS[self.optimizer].params, self.optimizer_params, owner=f"optimizer {self.optimizer!r}"))
        flat.update(resolve(SCHEDULES[self.schedule].params, self.schedule_params, owner=f"schedule {self.schedule!r}"))
        return flat

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any]) -> RunConfig:
        """Inverse of :meth:`flat`; unknown keys are an error (a typo would otherwise be ignored)."""
        missing = [k for k in ("optimizer", "lr", "schedule") if k not in flat]
        if missing:
            raise ValueError(f"params: missing {missing}; expected at least optimizer, lr and schedule")
        _check_names(flat["optimizer"], flat["schedule"])  # an unknown name first: its parameters would look unknown too
        opt_names = {p.name for p in OPTIMIZERS[flat["optimizer"]].params}
        sched_names = {p.name for p in SCHEDULES[flat["schedule"]].params}
        unknown = set(flat) - opt_names - sched_names - set(_RESERVED)
        if unknown:
            raise ValueError(f"params: {sorted(unknown)} belong to neither {flat['optimizer']!r} nor {flat['schedule']!r}")
        return cls(
            optimizer=flat["optimizer"],
            lr=float(flat["lr"]),
            schedule=flat["schedule"],
            warmup=float(flat.get("warmup", 0.0)),
            optimizer_params={k: flat[k] for k in opt_names if k in flat},
            schedule_params={k: flat[k] for k in sched_names if k in flat},
        )

    def build_optimizer(self, parameters: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """The optimizer at the peak rate; pair it with :meth:`build_scheduler`."""
        return build_optimizer(self.optimizer, parameters, self.lr, self.optimizer_params)

    def build_scheduler(self, optimizer: torch.optim.Optimizer, total_steps: int, *, mode: str = "min") -> StepScheduler:
        """The per-step scheduler: call ``step()`` after each ``optimizer.step()``; for ``plateau``, also
        ``report(val_metric)`` after each epoch (``mode``: the metric's direction, min or max)."""
        return StepScheduler(
            optimizer,
            total_steps=total_steps,
            schedule=self.schedule,
            params=self.schedule_params,
            warmup=self.warmup,
            mode=mode,
        )
