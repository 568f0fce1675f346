"""One contract over every schedule, then each against an independent closed form (torch's own)."""

from __future__ import annotations

import math

import pytest
import torch

from autolr.scheduler import StepScheduler
from autolr.schedules import SCHEDULES, PlateauState, lr_at, warmup_steps_for

PEAK = 0.5


def _curve(schedule: str, total: int, warmup: float = 0.0, params=None, metrics=None) -> list[float]:
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=PEAK)
    sched = StepScheduler(opt, total_steps=total, schedule=schedule, params=params, warmup=warmup)
    lrs = []
    steps_per_epoch = max(total // 5, 1)
    for step in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        if metrics is not None and (step + 1) % steps_per_epoch == 0:
            sched.report(metrics[(step + 1) // steps_per_epoch - 1])
    return lrs


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("total", [1, 7, 100, 1001])
@pytest.mark.parametrize("warmup", [0.0, 0.1, 0.5])
def test_contract_finite_within_floor_and_peak(name: str, total: int, warmup: float) -> None:
    spec = SCHEDULES[name]
    params = {p.name: p.default for p in spec.params}
    floor = PEAK * params.get("min_lr_frac", 0.0)
    lrs = _curve(name, total, warmup, params)
    assert len(lrs) == total
    assert all(math.isfinite(lr) and lr > 0 for lr in lrs)
    assert all(lr <= PEAK * (1 + 1e-9) for lr in lrs)
    w = warmup_steps_for(warmup, total)
    assert all(lr >= floor * (1 - 1e-9) for lr in lrs[w:])


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_contract_warmup_is_linear_and_monotone_up_to_the_peak_schedule(name: str) -> None:
    total, warmup = 200, 0.2
    lrs = _curve(name, total, warmup)
    w = warmup_steps_for(warmup, total)
    assert w == 40
    ramp = lrs[:w]
    assert all(b > a for a, b in zip(ramp, ramp[1:]))
    # after warmup the schedule starts from its own first value, which the ramp climbs to: no drop
    # (one_cycle starts at peak / div_factor; a ramp to the peak then fell 25x, a sawtooth)
    first = lr_at(0, total_steps=total - w, peak_lr=PEAK, schedule=name, params={p.name: p.default for p in SCHEDULES[name].params})
    assert ramp[0] == pytest.approx(first / (w + 1))
    assert lrs[w] == pytest.approx(first) and lrs[w - 1] < lrs[w]


def _torch_curve(make, total: int) -> list[float]:
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=PEAK)
    sched = make(opt)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


T = 120
CLOSED_FORMS = {
    "step": ({"step_frac": 0.25, "gamma": 0.5}, lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=30, gamma=0.5)),
    "multistep": ({"gamma": 0.2}, lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[60, 90], gamma=0.2)),
    "exponential": ({"final_frac": 0.01}, lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.01 ** (1 / T))),
    "cosine": ({"min_lr_frac": 0.1}, lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=T, eta_min=0.1 * PEAK)),
    "polynomial": ({"power": 2.0, "min_lr_frac": 0.0}, lambda o: torch.optim.lr_scheduler.PolynomialLR(o, total_iters=T, power=2.0)),
    "cosine_restarts": ({"cycles": 3, "min_lr_frac": 0.0}, lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=40)),
    "one_cycle": (
        {"pct_start": 0.3, "div_factor": 25.0, "final_div_factor": 1e4},
        lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=PEAK, total_steps=T, pct_start=0.3, cycle_momentum=False),
    ),
    "inverse_time": ({"decay": 4.0}, None),
    "warmup_stable_decay": ({"decay_frac": 0.25, "min_lr_frac": 0.0}, None),
    "constant": ({}, lambda o: torch.optim.lr_scheduler.ConstantLR(o, factor=1.0, total_iters=0)),
}


def test_every_schedule_has_a_closed_form_test() -> None:
    assert set(CLOSED_FORMS) | {"plateau"} == set(SCHEDULES)


@pytest.mark.parametrize("name", sorted(CLOSED_FORMS))
def test_matches_closed_form(name: str) -> None:
    params, make = CLOSED_FORMS[name]
    ours = _curve(name, T, 0.0, params)
    if name == "inverse_time":
        expected = [PEAK / (1 + 4.0 * t / T) for t in range(T)]
    elif name == "warmup_stable_decay":
        expected = [PEAK if t < 90 else PEAK * (1 - (t - 90) / 30) for t in range(T)]
    else:
        expected = _torch_curve(make, T)
    assert ours == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_plateau_matches_torch_reduce_on_plateau() -> None:
    metrics = [1.0, 0.9, 0.9, 0.9, 0.95]  # improvement, then three bad epochs
    ours = _curve("plateau", 50, 0.0, {"factor": 0.5, "patience": 1}, metrics)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=PEAK)
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=1)
    expected = []
    for step in range(50):
        expected.append(opt.param_groups[0]["lr"])
        if (step + 1) % 10 == 0:
            ref.step(metrics[(step + 1) // 10 - 1])
    assert ours == pytest.approx(expected)
    assert min(ours) == pytest.approx(PEAK * 0.5)


def test_plateau_treats_nan_as_no_improvement() -> None:
    state = PlateauState(patience=0)
    state.update(1.0)
    assert state.update(float("nan")) == 1


def test_unknown_schedule_and_parameter_are_rejected() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="unknown schedule 'cosin'"):
        StepScheduler(opt, total_steps=10, schedule="cosin")
    with pytest.raises(ValueError, match=r"schedule 'cosine' has no parameter\(s\) \['gamma'\]"):
        StepScheduler(opt, total_steps=10, schedule="cosine", params={"gamma": 0.1})
    with pytest.raises(ValueError, match=r"StepScheduler: warmup expected a number in \[0, 0.9\], got 1.0"):
        StepScheduler(opt, total_steps=10, schedule="cosine", warmup=1.0)
