"""Learning-rate schedules: a registry of small pure functions of the optimisation step.

Every schedule is a *factor* of the peak rate, ``f(t, T, **params)`` with ``t`` the step within the
decay phase (``0 <= t < T``). :func:`lr_at` composes it with a linear warmup:

1. warmup: for the first ``warmup_steps`` steps the rate rises linearly to the schedule's start (the
   peak; ``one_cycle`` starts at peak / ``div_factor`` and climbs to the peak itself, so a warmup
   before it ends there rather than at the peak and dropping 25x);
2. decay: afterwards the schedule's factor, with time measured from the end of warmup;
3. floor: no factor drops below the schedule's ``min_lr_frac`` (0 unless set).

The searched ``lr`` is always the peak rate. ``plateau`` is the one schedule that depends on the
validation metric: its factor is ``factor ** reductions``, and :class:`PlateauState` counts reductions
exactly as ``torch.optim.lr_scheduler.ReduceLROnPlateau`` does.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

from autolr.params import ParamSpec, Range

__all__ = ["SCHEDULES", "PlateauState", "Schedule", "lr_at", "warmup_steps_for"]


@dataclasses.dataclass(frozen=True)
class Schedule:
    name: str
    factor: Callable[..., float]
    params: tuple[ParamSpec, ...] = ()
    doc: str = ""
    start: Callable[..., float] | None = None  # the factor a warmup before it climbs to (its params as keywords); None: 1, the peak

    def param(self, name: str) -> ParamSpec:
        return next(p for p in self.params if p.name == name)


def _min_lr_frac(default: float = 0.0) -> ParamSpec:
    return ParamSpec("min_lr_frac", default, float, 0.0, 1.0, doc="floor, as a fraction of the peak")


def _constant(t: int, T: int) -> float:
    return 1.0


def _step(t: int, T: int, *, step_frac: float, gamma: float) -> float:
    step_size = max(1, round(step_frac * T))
    return gamma ** (t // step_size)


def _multistep(t: int, T: int, *, milestones: tuple = (0.5, 0.75), gamma: float) -> float:
    passed = sum(1 for m in milestones if t >= round(m * T))
    return gamma**passed


def _exponential(t: int, T: int, *, final_frac: float) -> float:
    return final_frac ** (t / T)


def _inverse_time(t: int, T: int, *, decay: float) -> float:
    return 1.0 / (1.0 + decay * t / T)


def _polynomial(t: int, T: int, *, power: float, min_lr_frac: float) -> float:
    return min_lr_frac + (1.0 - min_lr_frac) * (1.0 - t / T) ** power


def _cosine(t: int, T: int, *, min_lr_frac: float) -> float:
    return min_lr_frac + (1.0 - min_lr_frac) * 0.5 * (1.0 + math.cos(math.pi * t / T))


def _cosine_restarts(t: int, T: int, *, cycles: int, min_lr_frac: float) -> float:
    cycle_len = T / cycles
    return _cosine(t - cycle_len * math.floor(t / cycle_len), math.ceil(cycle_len), min_lr_frac=min_lr_frac)


def _one_cycle(t: int, T: int, *, pct_start: float, div_factor: float, final_div_factor: float) -> float:
    # Same shape as torch's OneCycleLR (cosine annealing): up from 1/div to 1, then down to 1/(div*final).
    initial, final = 1.0 / div_factor, 1.0 / (div_factor * final_div_factor)
    up_end = pct_start * T - 1
    if t <= up_end:
        return 1.0 if up_end <= 0 else _anneal(initial, 1.0, t / up_end)
    return _anneal(1.0, final, (t - up_end) / max(T - 1 - up_end, 1e-12))


def _anneal(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * min(pct, 1.0)) + 1)


def _warmup_stable_decay(t: int, T: int, *, decay_frac: float, min_lr_frac: float) -> float:
    decay_start = T * (1.0 - decay_frac)
    if t < decay_start:
        return 1.0
    return min_lr_frac + (1.0 - min_lr_frac) * (1.0 - (t - decay_start) / (T - decay_start))


def _plateau(t: int, T: int, *, factor: float, patience: int, min_lr_frac: float, reductions: int = 0) -> float:
    return max(min_lr_frac, factor**reductions)


SCHEDULES: Mapping[str, Schedule] = {
    s.name: s
    for s in [
        Schedule("constant", _constant, doc="the peak rate throughout"),
        Schedule(
            "step",
            _step,
            (
                ParamSpec("step_frac", 0.3, float, 1e-6, 1.0, Range(0.1, 0.5), "decay every this fraction of steps"),
                ParamSpec("gamma", 0.3, float, 1e-6, 1.0, Range(0.05, 0.7, log=True), "decay factor"),
            ),
            "multiply by gamma every step_frac of the run",
        ),
        Schedule(
            "multistep",
            _multistep,
            (ParamSpec("gamma", 0.1, float, 1e-6, 1.0, Range(0.05, 0.5, log=True), "decay factor at 50% and 75%"),),
            "multiply by gamma at 50% and 75% of the run",
        ),
        Schedule(
            "exponential",
            _exponential,
            (ParamSpec("final_frac", 0.01, float, 1e-8, 1.0, Range(1e-3, 0.3, log=True), "rate at the end / peak"),),
            "smooth exponential decay to final_frac of the peak",
        ),
        Schedule(
            "inverse_time",
            _inverse_time,
            (ParamSpec("decay", 10.0, float, 0.0, 1e6, Range(0.5, 100.0, log=True), "lr = peak / (1 + decay t/T)"),),
            "peak / (1 + decay * progress)",
        ),
        Schedule(
            "polynomial",
            _polynomial,
            (ParamSpec("power", 1.0, float, 1e-3, 100.0, Range(0.5, 3.0), "exponent"), _min_lr_frac()),
            "(1 - progress) ** power",
        ),
        Schedule("cosine", _cosine, (_min_lr_frac(),), "half a cosine from the peak to the floor"),
        Schedule(
            "cosine_restarts",
            _cosine_restarts,
            (ParamSpec("cycles", 2, int, 1, 1000, Range(1, 4, integer=True), "number of cosine cycles"), _min_lr_frac()),
            "SGDR: cosine cycles of equal length, restarting at the peak",
        ),
        Schedule(
            "one_cycle",
            _one_cycle,
            (
                ParamSpec("pct_start", 0.3, float, 0.01, 0.99, Range(0.1, 0.5), "fraction of steps spent rising"),
                ParamSpec("div_factor", 25.0, float, 1.0, 1e6, None, "start at peak / div_factor"),
                ParamSpec("final_div_factor", 1e4, float, 1.0, 1e9, None, "end at start / final_div_factor"),
            ),
            "Smith's one-cycle policy (cosine annealing, as torch's OneCycleLR)",
            lambda *, div_factor, **_: 1.0 / div_factor,  # it climbs from there to the peak itself
        ),
        Schedule(
            "warmup_stable_decay",
            _warmup_stable_decay,
            (ParamSpec("decay_frac", 0.2, float, 0.01, 1.0, Range(0.1, 0.4), "final fraction spent decaying"), _min_lr_frac()),
            "constant, then a linear decay over the last decay_frac of the run (WSD)",
        ),
        Schedule(
            "plateau",
            _plateau,
            (
                ParamSpec("factor", 0.3, float, 1e-6, 0.999, Range(0.1, 0.5), "multiply by this on a plateau"),
                ParamSpec("patience", 2, int, 0, 1000, Range(1, 4, integer=True), "epochs without improvement"),
                _min_lr_frac(),
            ),
            "reduce on plateau of the validation metric (per epoch)",
        ),
    ]
}


def warmup_steps_for(warmup: float, total_steps: int) -> int:
    """Number of warmup steps for a warmup given as a fraction of all steps."""
    return min(int(round(warmup * total_steps)), max(total_steps - 1, 0))


def lr_at(
    step: int,
    *,
    total_steps: int,
    peak_lr: float,
    schedule: str,
    params: Mapping[str, object],
    warmup_steps: int = 0,
    reductions: int = 0,
) -> float:
    """The learning rate used at optimisation step ``step`` (0-based)."""
    decay_steps = max(total_steps - warmup_steps, 1)
    kwargs = dict(params)
    if schedule == "plateau":
        kwargs["reductions"] = reductions
    floor = float(params.get("min_lr_frac", 0.0))
    # 1) linear warmup: never exactly zero, reaches the schedule's start at the first decay step (the
    #    peak, but for one_cycle, which starts at peak / div_factor and climbs on its own)
    if step < warmup_steps:
        start = SCHEDULES[schedule].start
        return peak_lr * (1.0 if start is None else start(**params)) * (step + 1) / (warmup_steps + 1)
    # 2) the schedule's factor, on the clock that starts after warmup; 3) its floor
    t = min(step - warmup_steps, decay_steps - 1)
    return peak_lr * max(SCHEDULES[schedule].factor(t, decay_steps, **kwargs), floor)


class PlateauState:
    """Counts reductions on a plateau of a per-epoch metric, as torch's ReduceLROnPlateau does
    (relative threshold 1e-4, no cooldown)."""

    def __init__(self, *, patience: int, mode: str = "min", threshold: float = 1e-4) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.patience = patience
        self.mode = mode
        self.threshold = threshold
        self.best = math.inf if mode == "min" else -math.inf
        self.bad_epochs = 0
        self.reductions = 0

    def update(self, value: float) -> int:
        """Record one epoch's metric; returns the number of reductions so far."""
        if self._improves(value):
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        if self.bad_epochs > self.patience:
            self.reductions += 1
            self.bad_epochs = 0
        return self.reductions

    def _improves(self, value: float) -> bool:
        if math.isnan(value):
            return False
        # torch's "rel" threshold mode, formula for formula
        if self.mode == "min":
            return value < self.best * (1.0 - self.threshold)
        return value > self.best * (1.0 + self.threshold)
