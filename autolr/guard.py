"""Divergence: the rules that decide, step by step, that a training run has diverged.

Pure Python (no torch): the trainer hands it host values, one window of steps at a time.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence

__all__ = ["Diverged", "DivergenceGuard"]


class Diverged(Exception):
    """Training diverged at ``step``; ``reason`` reads like ``loss inf at step 37``."""

    def __init__(self, step: int, reason: str) -> None:
        super().__init__(reason)
        self.step = step
        self.reason = reason


@dataclasses.dataclass
class DivergenceGuard:
    """Decides, step by step, that a run has diverged. Four rules, checked in order:

    1. the loss or the gradient norm is not finite;
    2. the loss is above ``loss_factor`` times the first step's loss (a blow-up);
    3. sustained growth: the loss rose at each of the last ``rise_steps`` steps, at least doubled over
       them, and is back above the first step's loss. Just above the stability limit the loss grows
       by only a few percent a step and takes dozens of steps to reach rule 2; this catches it early,
       while mini-batch noise essentially never rises ``rise_steps`` times in a row *and* doubles
       *and* climbs back above where training started;
    4. stuck high: the smoothed loss (bias-corrected EMA) stayed above twice the first step's loss for
       ``high_steps`` steps in a row. A rate too high for the network but not high enough to explode
       leaves the loss bouncing well above where it started for the whole run; training that works
       never spends that long at twice its initial loss.
    """

    loss_factor: float = 10.0
    rise_steps: int = 6
    high_steps: int = 12
    smoothing: float = 0.9
    reference_loss: float | None = None
    _recent: list = dataclasses.field(default_factory=list, repr=False)
    _ema: float = dataclasses.field(default=0.0, repr=False)
    _seen: int = dataclasses.field(default=0, repr=False)
    _high_for: int = dataclasses.field(default=0, repr=False)

    def __post_init__(self) -> None:
        if not self.loss_factor > 1.0:
            raise ValueError(f"loss_factor must be > 1, got {self.loss_factor}")
        if self.rise_steps < 2:
            raise ValueError(f"rise_steps must be >= 2, got {self.rise_steps}")

    def check(self, first_step: int, losses: Sequence[float], grad_norms: Sequence[float]) -> Diverged | None:
        """The first divergent step in a window of consecutive steps, or None."""
        for i, (loss, grad_norm) in enumerate(zip(losses, grad_norms)):
            step = first_step + i
            if not math.isfinite(loss):
                return Diverged(step, f"diverged: loss {loss} at step {step}")
            if not math.isfinite(grad_norm):
                return Diverged(step, f"diverged: grad_norm {grad_norm} at step {step}")
            if self.reference_loss is None:
                self.reference_loss = abs(loss)
            reason = self._blow_up(loss) or self._sustained_growth(loss) or self._stuck_high(loss)
            if reason:
                return Diverged(step, f"diverged: {reason} at step {step}")
        return None

    def _blow_up(self, loss: float) -> str | None:
        ref = self.reference_loss
        if ref > 0 and abs(loss) > self.loss_factor * ref:
            return f"loss {loss:.4g} is {abs(loss) / ref:.1f}x the first step's"
        return None

    def _sustained_growth(self, loss: float) -> str | None:
        recent = self._recent
        recent.append(loss)
        if len(recent) > self.rise_steps + 1:
            del recent[0]
        if len(recent) <= self.rise_steps or loss <= self.reference_loss:
            return None
        rising = all(b > a for a, b in itertools.pairwise(recent))
        if rising and recent[0] > 0 and loss >= 2.0 * recent[0]:
            return f"loss {loss:.4g} rose {self.rise_steps} steps in a row ({loss / recent[0]:.1f}x)"
        return None

    def _stuck_high(self, loss: float) -> str | None:
        self._seen += 1
        self._ema = self.smoothing * self._ema + (1 - self.smoothing) * loss
        smoothed = self._ema / (1 - self.smoothing**self._seen)
        self._high_for = self._high_for + 1 if smoothed > 2.0 * self.reference_loss else 0
        if self._high_for >= self.high_steps:
            return f"smoothed loss {smoothed:.4g} stayed above 2x the first step's for {self.high_steps} steps"
        return None
