"""LR range test: the stability limit of a model and its optimizer, and the rate to train at.

Imports torch and numpy only. Every probe starts from the same state (the model's weights and buffers,
the optimizer's state), which is put back in ``finally`` whatever happens.

The limit is found with short *constant-rate* probes (12 steps) from the starting state, all on the
same batches. Right above the limit the unstable direction grows geometrically step after step while
the others still shrink, so the loss turns up, or overshoots its starting value, long before it
explodes; below the limit it only falls. A probe is unstable when its loss or gradient norm turns
non-finite, its loss comes back above the starting loss on the same batches, or climbs back 1.25x from
its minimum, winning back at least half of its drop (a fifth at full batch, where losses do not
wobble). Losses are means over windows of 3 steps, each divided by its own batch's starting loss, so
that one noisy mini-batch decides nothing. Both thresholds are set against mini-batch noise: once the loss is down at a fifth of its start, batch to
batch it wobbles by 2x, and a climb test that fired on a quarter of the drop judged the wobble, not
the rate (on digits, one standard deviation of the limit found from seed to seed was 1.32x for Adam,
1.28x for SGD; with these thresholds 1.12x and 1.20x; bench/suggestion_rule/fit.py).

1. Descent: probe ``end_lr``, then rates 4x lower each (2x after a probe that ran to its end before
   turning out unstable: the limit is near), until a probe is stable. Far above the limit a probe blows up within
   a step or two and is cut short, so the big steps down are cheap, and the limit ends up bracketed
   within 4x. (The classic exponential sweep spends most of its steps on rates
   that do nothing, and its stop rule fires 5 to 100x past the limit: a poor bracket.)
2. Bisection in log space between the highest stable and the lowest unstable rate, until the bracket
   is within ``tolerance`` or the budget (``steps``, 100 by default) is spent; ``max_stable_lr`` is its
   geometric middle. With mini-batches the limit found moves by 12-20% with the batch order, so the
   bisection stops at 1.5x: on digits, going on to 1.25x costs 12 steps more (56 instead of 44) and
   leaves the spread as it was (1.13x for Adam, 1.20x for SGD, over 24 seeds). Full-batch verdicts are
   exact, so there it goes on to 1.1x. All told about 45 steps on digits (under 1% of a 25-rate grid
   of 10-epoch runs).
3. Suggestion: a fraction of ``max_stable_lr`` that depends on the optimizer's family and shrinks with
   the length of the run in samples (:func:`suggest_lr`), fitted on digits (``bench/suggestion_rule/``)
   and checked on the other tasks of ``bench/finder.py``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from autolr.trainer import Batches, grad_norms

__all__ = [
    "ClassicSweep",
    "Probe",
    "RangeTestResult",
    "SuggestionRule",
    "classic_sweep",
    "common_rules",
    "min_over_ten_lr",
    "probe_verdict",
    "range_test",
    "smooth",
    "steepest_lr",
    "suggest_lr",
    "suggestion_rule",
    "valley_lr",
]

logger = logging.getLogger(__name__)

PROBE_STEPS = 12  # steps of one constant-rate probe (never more than the run itself)
START_RISE = 1.0  # a probe whose loss comes back above its start (window means) is unstable ...
PROBE_RISE = 1.25  # ... or climbs this far above its minimum; one this far above its start is cut short
CLIMB_SHARE = 0.5  # ... and a climb must win back this share of the drop (a noise floor's wobble does not)
FULL_BATCH_CLIMB_SHARE = 0.2  # full-batch losses do not wobble: a smaller climb is already a verdict
DESCENT = 4.0  # each rate of the descent is this factor below the last
FULL_BATCH_TOLERANCE = 1.1  # the bisection's default end: exact verdicts are worth narrowing down ...
MINI_BATCH_TOLERANCE = 1.5  # ... noisy ones only to about their own noise
PROBE_CHECK_EVERY = 2  # steps per host transfer in a probe: a blown-up probe stops a step or two in
CHECK_EVERY = 4  # steps per host transfer in the classic sweep
CLASSIC_STOP_FACTOR = 4.0  # the classic sweep stops once the smoothed loss is this multiple of its minimum
CLASSIC_SMOOTHING = 0.98  # the classic tools' EMA factor (fastai, Lightning)


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
        finite = lambda v: v if math.isfinite(v) else None  # noqa: E731 - JSON has no inf
        return {
            "lr": self.lr, "stable": self.stable, "reason": self.reason, "steps": self.steps,
            "end_loss": finite(self.end_loss), "end_grad_norm": finite(self.end_grad_norm),
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Probe":
        number = lambda v: math.inf if v is None else float(v)  # noqa: E731
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
    def from_dict(cls, data: Mapping[str, Any]) -> "RangeTestResult":
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


# --- the range test --------------------------------------------------------------------------------


def range_test(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    train_data: Dataset,
    *,
    batch_size: int,
    steps: int = 100,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    run_steps: int | None = None,
    tolerance: float | None = None,
    grad_clip: float | None = None,
    seed: int = 0,
) -> RangeTestResult:
    """Measure the stability limit of ``optimizer`` on ``model`` and suggest a rate to train at.

    Args:
        model, optimizer, loss_fn, train_data: what a training run would use; the optimizer's own
            hyperparameters (momentum, betas, ...) are kept and its rate is driven by the test. Both are
            back in their starting state afterwards, whatever happens.
        batch_size: as in training (at least the dataset's size: full batch).
        steps: the most optimizer steps the probes may take together (the test usually needs fewer).
        start_lr, end_lr: the range searched; nothing above ``end_lr`` or below ``start_lr`` is tried.
        run_steps: steps of the training run the rate is for (probes are never longer; the suggestion
            shrinks for longer runs, counted in samples). None: 1000.
        tolerance: the bisection stops when the limit is bracketed within this ratio. None: 1.1 at full
            batch, 1.5 with mini-batches (whose verdicts are not much more precise).
        grad_clip: clip the global gradient norm to this, as training would.
        seed: batch order (the same batches for every probe).
    """
    _check_arguments(batch_size=batch_size, steps=steps, start_lr=start_lr, end_lr=end_lr, tolerance=tolerance, run_steps=run_steps)
    runner = _Runner(model, optimizer, loss_fn, train_data, batch_size=batch_size, grad_clip=grad_clip, seed=seed)
    if tolerance is None:
        tolerance = FULL_BATCH_TOLERANCE if runner.full_batch else MINI_BATCH_TOLERANCE
    try:
        stable_lr, unstable_lr, probes = _measure(runner, steps, start_lr, end_lr, run_steps, tolerance)
    finally:
        runner.restore()
    max_stable = stable_lr if unstable_lr is None else math.sqrt(stable_lr * unstable_lr)
    lrs, losses, norms = _curve(probes)
    result = RangeTestResult(
        suggestion=suggest_lr(max_stable, run_steps, optimizer=optimizer, batch_size=None if runner.full_batch else batch_size),
        max_stable_lr=max_stable,
        stable_lr=stable_lr,
        unstable_lr=unstable_lr,
        lrs=lrs,
        losses=losses,
        grad_norms=norms,
        probes=tuple(probes),
        steps=runner.steps,
        samples=runner.samples,
        forward_samples=runner.forward_samples,
    )
    logger.info("range test: max stable lr %.4g, suggestion %.4g, %d steps", max_stable, result.suggestion, runner.steps)
    return result


def _measure(runner: "_Runner", steps: int, start_lr: float, end_lr: float, run_steps: int | None, tolerance: float):
    """The descent, then the bisection, within a budget of ``steps`` optimizer steps. Returns
    ``(highest stable lr, lowest unstable lr or None, probes)``."""
    probe_steps = min(PROBE_STEPS, run_steps or PROBE_STEPS)
    judge = _Judge(runner, reference=_finite_starting_losses(runner, probe_steps))
    affordable = lambda: runner.steps + probe_steps <= steps  # noqa: E731 - unstable probes end early
    probes = _descend(judge.probe, probe_steps, start_lr=start_lr, end_lr=end_lr, affordable=affordable)
    stable = max((p.lr for p in probes if p.stable), default=None)
    unstable = min((p.lr for p in probes if not p.stable), default=None)
    if stable is None:
        stable = max(probes[-1].lr / DESCENT, start_lr)  # a guess: nothing was seen stable
        logger.warning("range test: no probe was stable down to %.3g (raise steps, or lower start_lr)", probes[-1].lr)
        return stable, unstable, probes
    if unstable is not None:
        stable, unstable = _bisect(judge.probe, stable, unstable, probes, tolerance=tolerance, affordable=affordable)
    return stable, unstable, probes


def _descend(probe: Callable[[float], Probe], probe_steps: int, *, start_lr: float, end_lr: float, affordable: Callable[[], bool]) -> list[Probe]:
    """Probes from ``end_lr`` down until one is stable (or ``start_lr`` or the budget is reached).

    A probe cut short (it blew up) is far above the limit: the next rate is ``DESCENT`` times lower. One
    that ran to its end before turning out unstable is near it: the next is only ``sqrt(DESCENT)`` times
    lower, so the bracket starts narrower and the bisection needs a probe less.
    """
    probes = [probe(end_lr)]
    while not probes[-1].stable and probes[-1].lr > start_lr and affordable():
        step_down = DESCENT if probes[-1].steps < probe_steps else math.sqrt(DESCENT)
        probes.append(probe(max(probes[-1].lr / step_down, start_lr)))
    return probes


def _bisect(probe: Callable[[float], Probe], stable: float, unstable: float, probes: list[Probe], *, tolerance: float, affordable: Callable[[], bool]) -> tuple[float, float]:
    """Halves ``[stable, unstable]`` in log space until it is within ``tolerance``; appends to ``probes``."""
    while unstable / stable > tolerance and affordable():
        probes.append(probe(math.sqrt(stable * unstable)))
        if probes[-1].stable:
            stable = probes[-1].lr
        else:
            unstable = probes[-1].lr
    return stable, unstable


def _curve(probes: Sequence[Probe]) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """The probes' end loss and gradient norm against their rate: finite points only, rising in lr, so
    that no NaN or inf reaches the curve a user sees or a plot draws."""
    points = sorted((p.lr, p.end_loss, p.end_grad_norm) for p in probes if math.isfinite(p.end_loss) and math.isfinite(p.end_grad_norm))
    return tuple(p[0] for p in points), tuple(p[1] for p in points), tuple(p[2] for p in points)


# --- the suggestion --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SuggestionRule:
    """``suggestion = max_stable_lr * min(cap, at_1000_steps * (1 - momentum) ** momentum_exponent
    * (1000 / run_steps) ** decay)``: the fraction of the limit to train at. The run is counted in steps
    of :data:`REFERENCE_BATCH` samples (``run_steps`` becomes ``run_steps * batch_size /
    REFERENCE_BATCH``): the fractions were fitted at that batch size, and with mini-batches the best
    rate follows the samples a run sees, not its steps. :func:`range_test` counts a full-batch run in
    steps (``batch_size`` None): without batch noise nothing says a bigger dataset wants a smaller rate."""

    at_1000_steps: float
    decay: float
    momentum_exponent: float = 0.0
    cap: float = 0.5

    def fraction(self, run_steps: int | None, momentum: float = 0.0, batch_size: int | None = None) -> float:
        at_1000 = self.at_1000_steps * (1.0 - min(momentum, 0.999)) ** self.momentum_exponent
        length = max(run_steps or 1000, 1) * (batch_size or REFERENCE_BATCH) / REFERENCE_BATCH
        return min(self.cap, at_1000 * (1000 / length) ** self.decay)


# Fitted on digits_mlp (10, 20 and 30 epochs; Adam and SGD with momentum 0.9 on 32 seeds, SGD with
# momentum 0 and 0.5 and RMSprop on 10; seeds 100-107 held out; see bench/suggestion_rule/), checked on
# make_classification and breast cancer. What a 12-step probe measures relates differently to a long
# run's best rate in each family:
# - Adam and kin: about 2.4% of the limit for a 1000-step run (a 440-step run on digits already
#   diverges from about a quarter of the short-run limit).
# - RMSprop: its running mean of squared gradients starts at 0, so its first steps are up to 10x too
#   big and its short-run limit is low against what a long run tolerates: a larger fraction.
# - SGD: the best rate follows the effective step lr / (1 - momentum), the measured limit much less
#   so; hence the momentum term (the best fraction on digits: 0.095, 0.049 and 0.016 at momentum 0, 0.5
#   and 0.9, which (1 - momentum) ** 0.75 follows; RMSprop's exponent was fitted at 0 and 0.9).
# - Batch size: counting the run in samples instead of steps, on digits (seeds 100-103, Adam and SGD,
#   10 and 20 epochs; the steps-based rule in the same run in brackets): batch 32, 9 of 16 within 1.05x
#   of the grid's best, median 1.026 (6 of 16, 1.081); batch 128, 14 of 16, 1.011 (8 of 16, 1.038).
#   Breast cancer (batch 32, 426 samples, seeds 100-103): 13 of 24 either way, median 1.043 (1.036);
#   SGD gains (12 of 12 against 10), Adam loses (1 of 12 against 3: its best fraction there is lower
#   than on digits however the run is counted).
REFERENCE_BATCH = 64  # the batch size the fractions were fitted at
SUGGESTION_DECAY = 0.6  # every family's fraction falls as (steps of 64) ** -0.6 (digits, 220 to 660 steps)
ADAPTIVE_RULE = SuggestionRule(at_1000_steps=0.024, decay=SUGGESTION_DECAY)
RMSPROP_RULE = SuggestionRule(at_1000_steps=0.12, decay=SUGGESTION_DECAY, momentum_exponent=0.4)
SGD_RULE = SuggestionRule(at_1000_steps=0.09, decay=SUGGESTION_DECAY, momentum_exponent=0.75)  # 0.016 at momentum 0.9


def suggestion_rule(optimizer: torch.optim.Optimizer | None) -> SuggestionRule:
    """The rule for ``optimizer``'s family: SGD, RMSprop, or adaptive (Adam, AdamW and the rest; also the
    rule for an optimizer it does not know, and for None)."""
    if isinstance(optimizer, torch.optim.RMSprop):
        return RMSPROP_RULE
    if isinstance(optimizer, torch.optim.SGD):
        return SGD_RULE
    return ADAPTIVE_RULE


def suggest_lr(max_stable_lr: float, run_steps: int | None = None, *, optimizer: torch.optim.Optimizer | None = None, batch_size: int | None = None) -> float:
    """The rate to train at with ``optimizer`` for a run of ``run_steps`` steps (None: 1000) of
    ``batch_size`` samples (None: :data:`REFERENCE_BATCH`).

    A fraction of the stability limit, set by the optimizer's family (:func:`suggestion_rule`), that
    shrinks with the length of the run in samples (a long run at a high constant rate ends in its own
    noise, or overfits), and is at most half the limit.
    """
    if not (max_stable_lr > 0 and math.isfinite(max_stable_lr)):
        raise ValueError(f"max_stable_lr: expected a finite number > 0, got {max_stable_lr!r}")
    if batch_size is not None and not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size: expected an integer >= 1 or None, got {batch_size!r}")
    momentum = float(optimizer.param_groups[0].get("momentum", 0.0)) if optimizer is not None else 0.0
    return max_stable_lr * suggestion_rule(optimizer).fraction(run_steps, momentum, batch_size)


def _check_arguments(*, batch_size: int, steps: int, start_lr: float, end_lr: float, tolerance: float | None, run_steps: int | None) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
    if steps < 30:
        raise ValueError(f"steps: expected an integer >= 30 (enough for a few probes), got {steps!r}")
    if not (0 < start_lr < end_lr and math.isfinite(end_lr)):
        raise ValueError(f"start_lr, end_lr: expected 0 < start_lr < end_lr (finite), got {start_lr!r}, {end_lr!r}")
    if tolerance is not None and not tolerance > 1.0:
        raise ValueError(f"tolerance: expected a ratio > 1 or None, got {tolerance!r}")
    if run_steps is not None and run_steps < 1:
        raise ValueError(f"run_steps: expected an integer >= 1 or None, got {run_steps!r}")


class _Runner:
    """Trains ``model`` from its starting state at given rates; :meth:`restore` puts that state back."""

    def __init__(self, model, optimizer, loss_fn, data, *, batch_size: int, grad_clip: float | None, seed: int) -> None:
        self.model, self.optimizer, self.loss_fn, self.data = model, optimizer, loss_fn, data
        self.batch_size, self.grad_clip, self.seed = batch_size, grad_clip, seed
        self.full_batch = batch_size >= len(data)  # the same batch every step
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("model: expected trainable parameters, got none (all frozen?)")
        self.device = self.params[0].device
        base = optimizer.param_groups[0]["lr"]
        # param groups keep their ratios to the first group's rate (discriminative rates stay so)
        self.ratios = [group["lr"] / base if base > 0 else 1.0 for group in optimizer.param_groups]
        self.model_state = copy.deepcopy(model.state_dict())
        self.optimizer_state = copy.deepcopy(optimizer.state_dict())
        self.was_training = model.training
        self.steps = 0
        self.samples = 0
        self.forward_samples = 0

    def restore(self) -> None:
        self.model.load_state_dict(self.model_state)
        # a copy each time: torch adopts some state tensors as given (Adam's ``step``) and then updates
        # them in place, which would change the saved state itself
        self.optimizer.load_state_dict(copy.deepcopy(self.optimizer_state))
        self.model.train(self.was_training)

    @contextlib.contextmanager
    def _same_randomness(self) -> Iterator[None]:
        """Every pass draws the same random numbers (dropout masks, augmentations) step for step, so that
        a probe's first loss is its reference's exactly and later ones differ by the rate alone; the
        caller's random state is put back afterwards."""
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.seed)
            yield

    @torch.no_grad()
    def starting_losses(self, n_batches: int) -> list[float]:
        """The loss at the starting weights on each of the first ``n_batches`` batches, forward only."""
        self.restore()
        self.model.train()  # as in a step: batch statistics, dropout
        batches = self._endless_batches()
        losses = []
        with self._same_randomness():
            for _ in range(1 if self.full_batch else n_batches):  # full batch: one pass will do
                x, y = next(batches)
                losses.append(self.loss_fn(self.model(x), y).detach().reshape(()))
                self.forward_samples += len(x)
        self.restore()  # the forward passes moved BatchNorm's running statistics
        values = torch.stack(losses).float().tolist()
        return values * n_batches if self.full_batch else values

    def run(self, lrs: Sequence[float], stop: Callable[[list[float]], bool], *, check_every: int = CHECK_EVERY) -> tuple[list[float], list[float]]:
        """Loss and gradient norm of one step at each rate, from the starting state, until ``stop(losses)``
        or a non-finite value, looked at every ``check_every`` steps."""
        self.restore()
        self.model.train()
        batches = self._endless_batches()
        losses: list[float] = []
        norms: list[float] = []
        with self._same_randomness():
            for first in range(0, len(lrs), check_every):
                window = [self._step(lr, *next(batches)) for lr in lrs[first : first + check_every]]
                host = torch.stack([torch.stack(values) for values in window]).float().tolist()  # one sync per window
                losses += [h[0] for h in host]
                norms += [h[1] for h in host]
                if not all(math.isfinite(v) for h in host for v in h) or stop(losses):
                    break
        return losses, norms

    def _endless_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = Batches(self.data, self.batch_size, self.device, seed=self.seed)
        while True:
            yield from batches

    def _step(self, lr: float, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for group, ratio in zip(self.optimizer.param_groups, self.ratios):
            group["lr"] = lr * ratio
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(x), y)
        loss.backward()
        norms = grad_norms(self.params)
        total = torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros((), device=self.device)
        if self.grad_clip is not None:
            torch.nn.utils.clip_grads_with_norm_(self.params, self.grad_clip, total)
        self.optimizer.step()
        self.steps += 1
        self.samples += len(x)
        return loss.detach().reshape(()), total.detach()


def _finite_starting_losses(runner: _Runner, n_batches: int) -> list[float]:
    losses = runner.starting_losses(n_batches)
    bad = next((v for v in losses if not math.isfinite(v)), None)
    if bad is not None:
        raise ValueError(f"loss_fn: the loss at the starting weights is {bad}, before any step; fix the model, the data or the loss first")
    return losses


@dataclasses.dataclass(frozen=True)
class _Judge:
    """Runs probes as long as ``reference`` (the starting loss on each of their batches) and judges them."""

    runner: _Runner
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


def probe_verdict(losses: Sequence[float], grad_norms: Sequence[float] = (), *, reference: Sequence[float] | None = None, climb_share: float = CLIMB_SHARE) -> str:
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
    if peak > START_RISE:
        return f"loss rose to {peak:.3g}x its starting value"
    if end > PROBE_RISE * low and end - low > climb_share * (1.0 - low):
        return f"loss climbed back to {end / low:.3g}x its minimum"
    return ""


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


# --- the classic range test and its rules, for comparison ------------------------------------------


def smooth(values: Sequence[float], beta: float) -> list[float]:
    """Exponential moving average, bias-corrected (the first points are not dragged towards 0)."""
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = beta * avg + (1.0 - beta) * v
        out.append(avg / (1.0 - beta**i))
    return out


@dataclasses.dataclass(frozen=True)
class ClassicSweep:
    """The curve of a classic range test (finite points only), the rate at which its stop rule fired
    (None when it reached ``end_lr``) and what it cost."""

    lrs: tuple[float, ...]
    losses: tuple[float, ...]
    stopped_at: float | None
    steps: int
    samples: int


def classic_sweep(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    train_data: Dataset,
    *,
    batch_size: int,
    steps: int = 100,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    seed: int = 0,
) -> ClassicSweep:
    """The classic range test as fastai and Lightning run it, for comparison: ``steps`` exponentially
    rising rates, stopped once the loss smoothed with 0.98 is 4x its minimum. The state is restored."""
    runner = _Runner(model, optimizer, loss_fn, train_data, batch_size=batch_size, grad_clip=None, seed=seed)
    lrs = np.geomspace(start_lr, end_lr, steps).tolist()

    def stop(losses: list[float]) -> bool:
        smoothed = smooth(losses, CLASSIC_SMOOTHING)
        return len(smoothed) > 1 and smoothed[-1] > CLASSIC_STOP_FACTOR * min(smoothed)

    try:
        losses, _ = runner.run(lrs, stop=stop)
    finally:
        runner.restore()
    keep = [i for i, v in enumerate(losses) if math.isfinite(v)]
    stopped_at = lrs[len(losses) - 1] if len(losses) < steps or stop(losses) else None
    return ClassicSweep(tuple(lrs[i] for i in keep), tuple(losses[i] for i in keep), stopped_at, runner.steps, runner.samples)


def steepest_lr(lrs: Sequence[float], losses: Sequence[float], *, skip_begin: int = 10, skip_end: int = 1) -> float | None:
    """Steepest descent of the smoothed loss against log lr (Lightning's and torch-lr-finder's rule)."""
    lrs, smoothed = _classic_curve(lrs, losses)
    if len(lrs) < skip_begin + skip_end + 3:
        return None
    lrs, smoothed = lrs[skip_begin : len(lrs) - skip_end], smoothed[skip_begin : len(smoothed) - skip_end]
    return float(lrs[int(np.argmin(np.gradient(smoothed, np.log(lrs))))])


def valley_lr(lrs: Sequence[float], losses: Sequence[float]) -> float | None:
    """fastai's valley: two thirds of the way down the longest descending stretch of the smoothed loss."""
    lrs, smoothed = _classic_curve(lrs, losses)
    n = len(smoothed)
    if n < 3:
        return None
    longest = [1] * n  # longest decreasing subsequence ending at i
    best_end = 0
    for i in range(1, n):
        for j in range(i):
            if smoothed[i] < smoothed[j] and longest[i] < longest[j] + 1:
                longest[i] = longest[j] + 1
        if longest[i] > longest[best_end]:
            best_end = i
    start = best_end - longest[best_end]
    third = (best_end - start) / 3
    return float(lrs[start + int(third) + int(third / 2)])


def min_over_ten_lr(lrs: Sequence[float], losses: Sequence[float]) -> float | None:
    """A tenth of the rate at the minimum of the smoothed loss (fastai's ``minimum`` / 10)."""
    lrs, smoothed = _classic_curve(lrs, losses)
    if len(lrs) == 0:
        return None
    return float(lrs[int(np.argmin(smoothed))] / 10.0)


def common_rules(lrs: Sequence[float], losses: Sequence[float]) -> dict[str, float | None]:
    """The classic tools' suggestions from one curve: steepest slope, valley and minimum/10."""
    return {"steepest": steepest_lr(lrs, losses), "valley": valley_lr(lrs, losses), "min_over_ten": min_over_ten_lr(lrs, losses)}


def _classic_curve(lrs: Sequence[float], losses: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    keep = [i for i, v in enumerate(losses) if math.isfinite(v)]
    return np.asarray([lrs[i] for i in keep], dtype=float), np.asarray(smooth([losses[i] for i in keep], CLASSIC_SMOOTHING))
