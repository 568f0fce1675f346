"""The verdict on one probe: is a constant-rate run from the starting state stable?

A probe is unstable when its loss or gradient norm turns non-finite, its loss comes back above the
starting loss on the same batches, or climbs back 1.25x from its minimum, winning back at least half of
its drop (a fifth at full batch, where losses do not wobble). Losses are means over windows of a
quarter of the probe, each divided by its own batch's starting loss, so that one noisy mini-batch
decides nothing. Both thresholds are set against mini-batch noise: once the loss is down at a fifth of
its start, batch to batch it wobbles by 2x, and a climb test that fired on a quarter of the drop judged
the wobble, not the rate (on digits, one standard deviation of the limit found from seed to seed was
1.32x for Adam, 1.28x for SGD; with these thresholds 1.12x and 1.20x; bench/suggestion_rule/fit.py,
which varies the constants below through this module).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from autolr.finder._result import Probe

if TYPE_CHECKING:
    from autolr.finder._runner import Runner

__all__ = ["CLIMB_SHARE", "FULL_BATCH_CLIMB_SHARE", "PROBE_RISE", "START_RISE", "Judge", "probe_verdict"]

START_RISE = 1.0  # a probe whose loss comes back above its start (window means) is unstable ...
PROBE_RISE = 1.25  # ... or climbs this far above its minimum; one this far above its start is cut short
CLIMB_SHARE = 0.5  # ... and a climb must win back this share of the drop (a noise floor's wobble does not)
FULL_BATCH_CLIMB_SHARE = 0.2  # full-batch losses do not wobble: a smaller climb is already a verdict
PROBE_CHECK_EVERY = 2  # steps per host transfer in a probe: a blown-up probe stops a step or two in


@dataclasses.dataclass(frozen=True)
class Judge:
    """Runs probes as long as ``reference`` (the starting loss on each of their batches) and judges them."""

    runner: Runner
    reference: Sequence[float]

    def probe(self, lr: float) -> Probe:
        losses, norms = self.runner.run([lr] * len(self.reference), stop=self._clearly_unstable, check_every=PROBE_CHECK_EVERY)
        climb_share = FULL_BATCH_CLIMB_SHARE if self.runner.full_batch else CLIMB_SHARE
        reason = probe_verdict(losses, norms, reference=self.reference, climb_share=climb_share)
        width = _window(len(self.reference))
        return Probe(lr=lr, stable=not reason, reason=reason, steps=len(losses), end_loss=_tail_mean(losses, width), end_grad_norm=_tail_mean(norms, width))

    def _clearly_unstable(self, losses: list[float]) -> bool:
        # an unstable probe is cut short: once the loss is well above its start the verdict cannot change
        ratios = _ratios(losses, self.reference)
        width = min(_window(len(self.reference)), len(losses))
        return ratios is not None and len(ratios) >= 2 and float(np.mean(ratios[-width:])) > PROBE_RISE


def _tail_mean(values: Sequence[float], width: int) -> float:
    tail = values[-width:]
    return float(np.mean(tail)) if all(map(math.isfinite, tail)) else math.inf


def probe_verdict(
    losses: Sequence[float], grad_norms: Sequence[float] = (), *, reference: Sequence[float] | None = None, climb_share: float = CLIMB_SHARE
) -> str:
    """Why a constant-rate run is unstable ("" when it is stable).

    Unstable: a non-finite loss or gradient norm; the loss coming back above its starting value
    (:data:`START_RISE`); or the loss climbing back :data:`PROBE_RISE` times its minimum, winning back
    ``climb_share`` of its drop (:data:`CLIMB_SHARE`; :func:`range_test` passes
    :data:`FULL_BATCH_CLIMB_SHARE` at full batch, whose losses do not wobble). Each loss is divided by
    ``reference``, the loss at the starting weights on the same batch (default: the first loss, for
    every step), so that easy and hard mini-batches compare fairly, and means are taken over windows of
    a quarter of the run, so that one noisy batch decides nothing. Losses that are not all positive are
    checked for non-finite values only.
    """
    for name, values in (("loss", losses), ("grad_norm", grad_norms)):
        for step, value in enumerate(values):
            if not math.isfinite(value):
                return f"{name} {value} at step {step}"
    if not losses:
        raise ValueError("losses: expected at least one value, got none")
    ratios = _ratios(losses, [losses[0]] * len(losses) if reference is None else reference)
    if ratios is None:
        return ""
    width = _window(len(losses))
    means = np.convolve(ratios, np.ones(width) / width, mode="valid")
    peak, end, low = means.max(), means[-1], means.min()
    if peak > START_RISE:  # as many digits as show the rise: ".3g" printed a rise to 1.004x as "1x"
        first = int(means.argmax())
        return f"loss rose to {_above_one(peak)}x its starting value (the mean of steps {first}-{first + width - 1})"
    if end > PROBE_RISE * low and end - low > climb_share * (1.0 - low):
        return f"loss climbed back to {end / low:.4g}x its minimum"
    return ""


def _above_one(ratio: float) -> str:
    """``ratio`` (above 1) with 4 significant digits, or as many more as it takes not to read 1."""
    digits = 4
    while digits < 12 and f"{ratio:.{digits}g}" == "1":
        digits += 1
    return f"{ratio:.{digits}g}"


def _ratios(losses: Sequence[float], reference: Sequence[float]) -> np.ndarray | None:
    reference = np.asarray(reference[: len(losses)], dtype=float)
    if len(reference) < len(losses):
        raise ValueError(f"reference: expected a starting loss for each of the {len(losses)} steps, got {len(reference)}")
    losses = np.asarray(losses, dtype=float)
    if not (np.all(reference > 0) and np.all(losses >= 0)):
        return None
    return losses / reference


def _window(steps: int) -> int:
    return max(steps // 4, 1)
