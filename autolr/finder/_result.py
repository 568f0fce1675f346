"""What a range test measured: its probes (:class:`Probe`) and its result (:class:`RangeTestResult`).

Plain data, JSON round-trip included (the study caches results in its storage); no torch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["Probe", "RangeTestResult"]


@dataclasses.dataclass(frozen=True)
class Probe:
    """A constant-rate run from the starting state; ``reason`` says why it is unstable ("" if stable).

    ``end_loss`` and ``end_grad_norm`` are means over its last steps (inf when they went non-finite).
    """

    lr: float
    stable: bool
    reason: str
    steps: int
    end_loss: float
    end_grad_norm: float = math.inf

    def to_dict(self) -> dict[str, Any]:
        finite = lambda v: v if math.isfinite(v) else None  # JSON has no inf
        return {
            "lr": self.lr, "stable": self.stable, "reason": self.reason, "steps": self.steps,
            "end_loss": finite(self.end_loss), "end_grad_norm": finite(self.end_grad_norm),
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Probe:
        number = lambda v: math.inf if v is None else float(v)
        return cls(
            float(data["lr"]), bool(data["stable"]), str(data["reason"]), int(data["steps"]),
            number(data["end_loss"]), number(data.get("end_grad_norm")),
        )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class RangeTestResult:
    """What one range test measured.

    ``max_stable_lr`` is the estimated largest constant rate that stays stable; the bisection left it
    between ``stable_lr`` (the highest rate seen stable) and ``unstable_lr`` (the lowest seen unstable;
    None when nothing up to ``end_lr`` was). ``suggestion`` is the rate to train at. The curve
    (``lrs``, ``losses``, ``grad_norms``) is the probes' loss and gradient norm at their end against
    their rate, finite points only, rising in lr. What the whole test cost: ``steps`` optimizer steps on
    ``samples`` samples, and ``forward_samples`` forward-only.
    """

    suggestion: float
    max_stable_lr: float
    stable_lr: float
    unstable_lr: float | None
    lrs: tuple[float, ...]
    losses: tuple[float, ...]
    grad_norms: tuple[float, ...]
    probes: tuple[Probe, ...]
    steps: int
    samples: int
    forward_samples: int = 0

    def plot(self, ax=None):
        """Loss against lr (log scale), the probes as dots, the suggestion and the limit as lines: a
        matplotlib ``Figure`` (drawn on ``ax`` when given, else a new one). matplotlib is imported here
        only, when a plot is asked for."""
        from autolr import plots

        probes = [p.to_dict() for p in self.probes]
        return plots.draw_range_test(ax, self.lrs, self.losses, suggestion=self.suggestion, max_stable_lr=self.max_stable_lr, probes=probes)

    @property
    def lr_range(self) -> tuple[float, float]:
        """``(suggestion, max_stable_lr)``: from the rate to train at up to the stability limit."""
        return (self.suggestion, self.max_stable_lr)

    def to_dict(self) -> dict[str, Any]:
        return {
            "suggestion": self.suggestion,
            "max_stable_lr": self.max_stable_lr,
            "lr_range": list(self.lr_range),
            "stable_lr": self.stable_lr,
            "unstable_lr": self.unstable_lr,
            "steps": self.steps,
            "samples": self.samples,
            "forward_samples": self.forward_samples,
            "probes": [p.to_dict() for p in self.probes],
            "curve": {"lr": list(self.lrs), "loss": list(self.losses), "grad_norm": list(self.grad_norms)},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RangeTestResult:
        curve = data.get("curve", {})
        unstable = data.get("unstable_lr")
        return cls(
            suggestion=float(data["suggestion"]),
            max_stable_lr=float(data["max_stable_lr"]),
            stable_lr=float(data["stable_lr"]),
            unstable_lr=None if unstable is None else float(unstable),
            lrs=tuple(curve.get("lr", ())),
            losses=tuple(curve.get("loss", ())),
            grad_norms=tuple(curve.get("grad_norm", ())),
            probes=tuple(Probe.from_dict(p) for p in data.get("probes", ())),
            steps=int(data.get("steps", 0)),
            samples=int(data.get("samples", 0)),
            forward_samples=int(data.get("forward_samples", 0)),
        )
