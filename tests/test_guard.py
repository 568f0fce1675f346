"""The divergence guard (autolr.guard): one test per rule, each pinning the step and the reason."""

from __future__ import annotations

import math

import pytest

from autolr.guard import Diverged, DivergenceGuard


def run(guard: DivergenceGuard, losses, *, window: int = 4) -> Diverged | None:
    """Feeds ``losses`` window by window, as the trainer does; the first verdict, or None."""
    for first in range(0, len(losses), window):
        chunk = losses[first : first + window]
        diverged = guard.check(first, chunk, [1.0] * len(chunk))
        if diverged is not None:
            return diverged
    return None


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_rule_1_a_non_finite_loss_diverges_at_that_step(bad):
    diverged = run(DivergenceGuard(), [1.0, 0.9, 0.8, bad, 0.7])
    assert (diverged.step, diverged.reason) == (3, f"diverged: loss {bad} at step 3")


def test_rule_1_a_non_finite_gradient_norm_diverges_too():
    diverged = DivergenceGuard().check(5, [1.0, 0.9], [1.0, math.nan])
    assert (diverged.step, diverged.reason) == (6, "diverged: grad_norm nan at step 6")


def test_rule_2_blow_up_past_loss_factor_times_the_first_loss():
    guard = DivergenceGuard(loss_factor=10.0)
    assert run(guard, [2.0, 1.5, 19.9]) is None  # 9.95x: not yet
    diverged = guard.check(3, [20.5], [1.0])
    assert (diverged.step, diverged.reason) == (3, "diverged: loss 20.5 is 10.2x the first step's at step 3")


def test_rule_3_sustained_growth_six_rises_that_double_and_pass_the_start():
    losses = [1.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2]  # from 0.5: six rises in a row, 2.4x, above 1.0
    diverged = run(DivergenceGuard(), losses)
    assert (diverged.step, diverged.reason) == (7, "diverged: loss 1.2 rose 6 steps in a row (2.4x) at step 7")


def test_rule_3_needs_the_loss_back_above_its_start():
    # six rises that double, but still below the first loss: a recovery, not a divergence
    assert run(DivergenceGuard(), [1.0, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5]) is None


def test_rule_4_a_loss_stuck_at_twice_its_start():
    # flat at 2.5x the first loss: no blow-up, no rise; the smoothed loss passes 2x at step 2
    diverged = run(DivergenceGuard(), [1.0] + [2.5] * 20)
    expected = "diverged: smoothed loss 2.451 stayed above 2x the first step's for 12 steps at step 13"
    assert (diverged.step, diverged.reason) == (13, expected)


def test_a_healthy_decreasing_loss_never_fires():
    # a noisy decreasing curve (+-20% batch to batch) over 500 steps
    losses = [2.3 / (1 + 0.05 * t) * (1.2 if t % 3 == 0 else 0.8 if t % 3 == 1 else 1.0) for t in range(500)]
    assert run(DivergenceGuard(), losses, window=16) is None


def test_the_first_loss_is_the_reference():
    guard = DivergenceGuard()
    guard.check(0, [-3.0, 1.0], [1.0, 1.0])
    assert guard.reference_loss == 3.0  # its size, whatever its sign


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"loss_factor": 1.0}, "loss_factor must be > 1, got 1.0"), ({"rise_steps": 1}, "rise_steps must be >= 2, got 1")]
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DivergenceGuard(**kwargs)
