"""Gradient health flags: exploding and vanishing gradients, each with the step where it began."""

from __future__ import annotations

import math

import pytest

from autolr.monitor import GradientMonitor


def test_healthy_gradients_raise_no_flag() -> None:
    monitor = GradientMonitor()
    assert monitor.observe_steps(0, [1.0, 1.2, 0.9, 1.1] * 10) == []
    assert monitor.summary() == "healthy"


def test_exploding_flagged_at_the_first_step_above_the_factor() -> None:
    monitor = GradientMonitor(explode_factor=10.0, reference_steps=4)
    monitor.observe_steps(0, [1.0, 1.0, 1.0, 1.0, 5.0, 9.9])
    (flag,) = monitor.observe_steps(6, [10.5, 50.0])
    assert (flag.kind, flag.step) == ("exploding", 6)
    assert "grad_norm 10.5 at step 6" in flag.reason
    assert monitor.flags["exploding"].step == 6  # later steps do not move it


def test_non_finite_norm_is_exploding_even_before_the_reference() -> None:
    monitor = GradientMonitor()
    (flag,) = monitor.observe_steps(0, [1.0, math.nan])
    assert (flag.kind, flag.step) == ("exploding", 1)


def test_vanishing_global_norm() -> None:
    monitor = GradientMonitor(vanish_factor=1e-3, reference_steps=2, vanish_steps=3)
    flags = monitor.observe_steps(0, [2.0, 2.0, 1e-2, 1e-3, 1e-4, 1e-4, 1e-5])
    assert [(f.kind, f.step) for f in flags] == [("vanishing", 3)]  # the first of three quiet steps in a row
    assert "for 3 steps from step 3" in flags[0].reason


def test_one_perfectly_fitted_batch_is_not_vanishing() -> None:
    monitor = GradientMonitor(vanish_factor=1e-3, reference_steps=2, vanish_steps=3)
    assert monitor.observe_steps(0, [2.0, 2.0, 1e-4, 0.5, 1e-4, 1e-4, 0.4]) == []


def test_vanishing_layer_while_others_learn() -> None:
    monitor = GradientMonitor(vanish_factor=1e-3)
    assert monitor.observe_layers(0, {"weight_grad_norm.0.weight": 1.0, "weight_grad_norm.2.weight": 1.0, "weight_norm.0.weight": 5.0}) == []
    (flag,) = monitor.observe_layers(50, {"weight_grad_norm.0.weight": 1e-4, "weight_grad_norm.2.weight": 0.8})
    assert (flag.kind, flag.step) == ("vanishing", 50)
    assert "layer 0.weight" in flag.reason and "vanishing" in monitor.summary()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"explode_factor": 1.0}, "explode_factor must be > 1, got 1.0"),
        ({"vanish_factor": 0.0}, r"vanish_factor must be in \(0, 1\), got 0.0"),
        ({"reference_steps": 0}, "reference_steps must be >= 1, got 0"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        GradientMonitor(**kwargs)
