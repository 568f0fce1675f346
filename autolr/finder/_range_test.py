"""The LR range test: the stability limit of a model and its optimizer, and the rate to train at.

Imports torch and numpy only. Every probe starts from the same state (the model's weights and buffers,
the optimizer's state, the random state), which is put back in ``finally`` whatever happens.

The limit is found with short *constant-rate* probes (12 steps) from the starting state, all on the
same batches. Right above the limit the unstable direction grows geometrically step after step while
the others still shrink, so the loss turns up, or overshoots its starting value, long before it
explodes; below the limit it only falls. What makes a probe unstable: :mod:`autolr.finder._verdict`.

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

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from autolr.finder._data import OptimizerFactory, batches_for, optimizer_for, step_for
from autolr.finder._result import Probe, RangeTestResult
from autolr.finder._runner import Runner, Step
from autolr.finder._suggestion import suggest_lr
from autolr.finder._verdict import Judge
from autolr.params import FINDER_STEPS

__all__ = ["MIN_RANGE_TEST_STEPS", "range_test"]

logger = logging.getLogger(__name__)

MIN_RANGE_TEST_STEPS = FINDER_STEPS.low  # the smallest budget that affords a few probes (the descent and a bisection)
PROBE_STEPS = 12  # steps of one constant-rate probe (never more than the run itself)
DESCENT = 4.0  # each rate of the descent is this factor below the last
FULL_BATCH_TOLERANCE = 1.1  # the bisection's default end: exact verdicts are worth narrowing down ...
MINI_BATCH_TOLERANCE = 1.5  # ... noisy ones only to about their own noise


def range_test(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | OptimizerFactory,
    data: Any,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    training_step: Step | None = None,
    batch_size: int | None = None,
    steps: int = 100,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    run_steps: int | None = None,
    tolerance: float | None = None,
    grad_clip: float | None = None,
    seed: int = 0,
) -> RangeTestResult:
    """Measure the stability limit of ``optimizer`` on ``model`` and suggest a rate to train at.

    Example::

        result = autolr.range_test(model, lambda p: torch.optim.AdamW(p, lr=1e-3), loader,
                                   training_step=lambda model, batch: model(**batch).loss)
        result.suggestion, result.max_stable_lr
        result.plot()

    Args:
        model: the model to train; its weights, buffers and mode are back as they were afterwards,
            whatever happens. Batches are moved to the device of its parameters.
        optimizer: an optimizer over ``model``'s parameters, or a function ``params -> optimizer``. Its
            own hyperparameters (momentum, betas, ...) are kept, its rate is driven by the test, and its
            state is back as it was afterwards.
        data: a ``Dataset`` (with ``batch_size``: autolr shuffles it with ``seed``), a ``DataLoader``
            (used as it is: its collate, workers and batch size), or any iterable of batches. Batches may
            be tuples, lists, dicts or nested ones.
        loss_fn: ``loss_fn(model(inputs), targets)`` for ``(inputs, targets)`` batches.
        training_step: ``training_step(model, batch) -> scalar loss tensor`` for any other batch, or a
            model that computes its own loss; used instead of ``loss_fn`` when given.
        batch_size: as in training, for a ``Dataset`` only (at least its size: full batch).
        steps: the most optimizer steps the probes may take together (the test usually needs fewer).
        start_lr, end_lr: the range searched; nothing above ``end_lr`` or below ``start_lr`` is tried.
        run_steps: steps of the training run the rate is for (probes are never longer; the suggestion
            shrinks for longer runs, counted in samples). None: 1000.
        tolerance: the bisection stops when the limit is bracketed within this ratio. None: 1.1 at full
            batch, 1.5 with mini-batches (whose verdicts are not much more precise).
        grad_clip: clip the global gradient norm to this, as training would.
        seed: batch order, and every random draw of the steps (the same for every probe); the caller's
            random state (torch, numpy, ``random``) is put back.

    Raises:
        ValueError: an argument out of range, or a loss that is not finite before any step.
        TypeError: ``data``, ``optimizer`` or a batch of a kind the test cannot use (a batch that is not
            ``(inputs, targets)`` needs ``training_step``).
    """
    _check_arguments(steps=steps, start_lr=start_lr, end_lr=end_lr, tolerance=tolerance, run_steps=run_steps)
    step = step_for(loss_fn, training_step)
    probe_steps = min(PROBE_STEPS, run_steps or PROBE_STEPS)
    batches = batches_for(data, batch_size, seed=seed, needed=probe_steps)
    optimizer = optimizer_for(model, optimizer)
    runner = Runner(model, optimizer, step, batches, grad_clip=grad_clip, seed=seed)
    if tolerance is None:
        tolerance = FULL_BATCH_TOLERANCE if runner.full_batch else MINI_BATCH_TOLERANCE
    try:
        stable_lr, unstable_lr, probes = _measure(runner, steps, start_lr, end_lr, run_steps, tolerance)
    finally:
        runner.restore()
    max_stable = stable_lr if unstable_lr is None else math.sqrt(stable_lr * unstable_lr)
    lrs, losses, norms = _curve(probes)
    result = RangeTestResult(
        suggestion=suggest_lr(max_stable, run_steps, optimizer=optimizer, batch_size=None if runner.full_batch else batches.batch_size),
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


def _measure(runner: Runner, steps: int, start_lr: float, end_lr: float, run_steps: int | None, tolerance: float):
    """The descent, then the bisection, within a budget of ``steps`` optimizer steps. Returns
    ``(highest stable lr, lowest unstable lr or None, probes)``."""
    probe_steps = min(PROBE_STEPS, run_steps or PROBE_STEPS)
    judge = Judge(runner, reference=_finite_starting_losses(runner, probe_steps))
    affordable = lambda: runner.steps + probe_steps <= steps  # unstable probes end early: count as they go
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


def _bisect(
    probe: Callable[[float], Probe], stable: float, unstable: float, probes: list[Probe], *, tolerance: float, affordable: Callable[[], bool]
) -> tuple[float, float]:
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


def _finite_starting_losses(runner: Runner, n_batches: int) -> list[float]:
    losses = runner.starting_losses(n_batches)
    bad = next((v for v in losses if not math.isfinite(v)), None)
    if bad is not None:
        raise ValueError(f"loss_fn: the loss at the starting weights is {bad}, before any step; fix the model, the data or the loss first")
    return losses


def _check_arguments(*, steps: int, start_lr: float, end_lr: float, tolerance: float | None, run_steps: int | None) -> None:
    if steps < MIN_RANGE_TEST_STEPS:
        raise ValueError(f"steps: expected an integer >= {MIN_RANGE_TEST_STEPS} (enough for a few probes), got {steps!r}")
    if not (0 < start_lr < end_lr and math.isfinite(end_lr)):
        raise ValueError(f"start_lr, end_lr: expected 0 < start_lr < end_lr (finite), got {start_lr!r}, {end_lr!r}")
    if tolerance is not None and not tolerance > 1.0:
        raise ValueError(f"tolerance: expected a ratio > 1 or None, got {tolerance!r}")
    if run_steps is not None and run_steps < 1:
        raise ValueError(f"run_steps: expected an integer >= 1 or None, got {run_steps!r}")
