"""Gradient health: flags exploding and vanishing gradients, with the step where each began.

Pure Python over the streams the trainer already produces (the global gradient norm every step, the
per-layer gradient norms every N steps), so watching costs nothing on the training side. The rules are
relative, because a "large" gradient norm means nothing across models:

1. reference: the median global gradient norm of the first ``reference_steps`` finite steps;
2. exploding: the first step whose global norm is non-finite or above ``explode_factor`` x reference;
3. vanishing: the first of ``vanish_steps`` consecutive steps whose global norm is below
   ``vanish_factor`` x reference (one mini-batch the model already fits perfectly gives one such step,
   which is not vanishing), or a layer-stats step where some layer's gradient norm fell below
   ``vanish_factor`` x that layer's first one (one layer going quiet while the others learn is the
   classic vanishing gradient).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping, Sequence

from autolr.keys import LAYER_GRAD_NORM

__all__ = ["GradientMonitor", "GradientFlag"]


@dataclasses.dataclass(frozen=True)
class GradientFlag:
    kind: str  # "exploding" | "vanishing"
    step: int
    reason: str


class GradientMonitor:
    """Watches one run's gradient norms; :attr:`flags` holds at most one flag of each kind."""

    def __init__(self, *, explode_factor: float = 10.0, vanish_factor: float = 1e-3, reference_steps: int = 10, vanish_steps: int = 10) -> None:
        if not explode_factor > 1.0:
            raise ValueError(f"explode_factor must be > 1, got {explode_factor}")
        if not 0.0 < vanish_factor < 1.0:
            raise ValueError(f"vanish_factor must be in (0, 1), got {vanish_factor}")
        if reference_steps < 1:
            raise ValueError(f"reference_steps must be >= 1, got {reference_steps}")
        if vanish_steps < 1:
            raise ValueError(f"vanish_steps must be >= 1, got {vanish_steps}")
        self.vanish_steps = vanish_steps
        self._quiet_since: int | None = None  # the first of the current run of steps below the vanishing line
        self._quiet_steps = 0
        self.explode_factor = explode_factor
        self.vanish_factor = vanish_factor
        self.reference_steps = reference_steps
        self.reference: float | None = None
        self.flags: dict[str, GradientFlag] = {}
        self._first: list[float] = []
        self._layer_reference: dict[str, float] = {}

    def observe_steps(self, first_step: int, grad_norms: Sequence[float]) -> list[GradientFlag]:
        """Global gradient norms of consecutive steps; returns the flags raised by them."""
        raised = []
        for i, norm in enumerate(grad_norms):
            flag = self._check_global(first_step + i, float(norm))
            if flag is not None:
                raised.append(flag)
        return raised

    def observe_layers(self, step: int, stats: Mapping[str, float]) -> list[GradientFlag]:
        """Per-layer stats (``weight_grad_norm.NAME`` keys are read; others are ignored)."""
        if "vanishing" in self.flags:
            return []
        for key, value in stats.items():
            if not key.startswith(LAYER_GRAD_NORM) or not math.isfinite(value):
                continue
            name = key[len(LAYER_GRAD_NORM) :]
            first = self._layer_reference.setdefault(name, value)
            if first > 0 and value < self.vanish_factor * first:
                reason = f"vanishing: layer {name} grad_norm {value:.3g} at step {step} is {value / first:.2g}x its first {first:.3g}"
                return [self._raise("vanishing", step, reason)]
        return []

    def summary(self) -> str:
        """One line for a tag: the flags raised, or ``healthy``."""
        if not self.flags:
            return "healthy"
        return "; ".join(f.reason for f in sorted(self.flags.values(), key=lambda f: f.step))

    def _check_global(self, step: int, norm: float) -> GradientFlag | None:
        if "exploding" not in self.flags and not math.isfinite(norm):
            return self._raise("exploding", step, f"exploding: grad_norm {norm} at step {step}")
        if not math.isfinite(norm):
            return None
        if self.reference is None:
            self._first.append(norm)
            if len(self._first) == self.reference_steps:
                self.reference = statistics.median(self._first)
            return None
        ref = self.reference
        if "exploding" not in self.flags and norm > self.explode_factor * ref:
            reason = f"exploding: grad_norm {norm:.3g} at step {step} is {norm / ref:.3g}x the first steps' median {ref:.3g}"
            return self._raise("exploding", step, reason)
        if "vanishing" in self.flags or not ref > 0:
            return None
        if norm >= self.vanish_factor * ref:
            self._quiet_since, self._quiet_steps = None, 0
            return None
        self._quiet_since = step if self._quiet_since is None else self._quiet_since
        self._quiet_steps += 1
        if self._quiet_steps < self.vanish_steps:
            return None
        start = self._quiet_since
        reason = (f"vanishing: grad_norm below {self.vanish_factor:.2g}x the first steps' median {ref:.3g} "
                  f"for {self._quiet_steps} steps from step {start}")  # fmt: skip
        return self._raise("vanishing", start, reason)

    def _raise(self, kind: str, step: int, reason: str) -> GradientFlag:
        flag = GradientFlag(kind, step, reason)
        self.flags[kind] = flag
        return flag
