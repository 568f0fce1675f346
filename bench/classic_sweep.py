"""The classic LR range test and its rules, for comparison (``bench/finder.py``, ``bench/suggestion_rule/``).

The exponential sweep as fastai and Lightning run it: ``steps`` rising rates, one step each, stopped
once the loss smoothed with 0.98 is 4x its minimum; and the rules those tools read off its curve
(steepest slope, valley, minimum / 10). It runs on autolr's own range-test runner (the same batches,
the same state restored), so that the comparison is between the methods, not the loops.

Importable as ``classic_sweep`` with ``bench/`` on ``sys.path``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from autolr.finder._data import DatasetBatches, step_for
from autolr.finder._runner import Runner

__all__ = ["ClassicSweep", "classic_sweep", "common_rules", "min_over_ten_lr", "smooth", "steepest_lr", "valley_lr"]

CHECK_EVERY = 4  # steps per host transfer in the classic sweep
CLASSIC_STOP_FACTOR = 4.0  # the classic sweep stops once the smoothed loss is this multiple of its minimum
CLASSIC_SMOOTHING = 0.98  # the classic tools' EMA factor (fastai, Lightning)


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
    batches = DatasetBatches(train_data, batch_size, seed=seed)
    runner = Runner(model, optimizer, step_for(loss_fn, None), batches, grad_clip=None, seed=seed)
    lrs = np.geomspace(start_lr, end_lr, steps).tolist()

    def stop(losses: list[float]) -> bool:
        smoothed = smooth(losses, CLASSIC_SMOOTHING)
        return len(smoothed) > 1 and smoothed[-1] > CLASSIC_STOP_FACTOR * min(smoothed)

    try:
        losses, _ = runner.run(lrs, stop=stop, check_every=CHECK_EVERY)
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
