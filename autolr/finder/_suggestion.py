"""The suggestion: the rate to train at, as a fraction of the stability limit the range test measured.

The fraction depends on the optimizer's family and shrinks with the length of the run in samples; its
constants were fitted on digits (``bench/suggestion_rule/``) and checked on the other tasks of
``bench/finder.py``. Imports torch only (to tell optimizer families apart).
"""

from __future__ import annotations

import dataclasses
import math

import torch

__all__ = ["ADAPTIVE_RULE", "REFERENCE_BATCH", "RMSPROP_RULE", "SGD_RULE", "SUGGESTION_DECAY", "SuggestionRule", "suggest_lr", "suggestion_rule"]


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
