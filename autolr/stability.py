"""What a finished trial says about stability: one rule, read by the sampler's ceiling, the parent run's
description and the frontier plot alike.

A trial is *stable* at its learning rate when it finished (COMPLETE, or PRUNED for its curve), did not
diverge, and ended with a lower training loss than it started with (``loss_ratio`` <= 1, where known):
a run whose loss ended above its start was not trained by that rate, whatever the guard said.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["is_stable", "max_stable_lr"]

FINISHED_STATES = ("COMPLETE", "PRUNED")


def is_stable(state: str, *, diverged: bool, loss_ratio: float | None) -> bool:
    """Whether a finished trial in ``state`` counts as stable at its learning rate."""
    return state in FINISHED_STATES and not diverged and not (loss_ratio is not None and loss_ratio > 1.0)


def max_stable_lr(trials: Iterable[tuple[float, bool]]) -> float | None:
    """The highest rate among ``(lr, stable)`` pairs that is stable, or None."""
    stable = [lr for lr, ok in trials if ok]
    return max(stable) if stable else None
