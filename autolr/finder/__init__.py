"""The LR range test: the stability limit of a model and its optimizer, and the rate to train at.

- :func:`range_test` runs it (``autolr.range_test``), on a built-in task or on your own model, data and
  training step (:mod:`._range_test`, searching with :mod:`._runner` on what :mod:`._data` makes of
  the arguments);
- :class:`RangeTestResult` and :class:`Probe` hold what it measured (:mod:`._result`);
- :func:`probe_verdict` decides whether one constant-rate probe was stable (:mod:`._verdict`);
- :func:`suggest_lr` turns the limit into the rate to train at (:mod:`._suggestion`).

The classic exponential sweep it is measured against lives in ``bench/classic_sweep.py``.
"""

from autolr.finder._range_test import MIN_RANGE_TEST_STEPS, range_test
from autolr.finder._result import Probe, RangeTestResult
from autolr.finder._suggestion import (
    ADAPTIVE_RULE,
    REFERENCE_BATCH,
    RMSPROP_RULE,
    SGD_RULE,
    SUGGESTION_DECAY,
    SuggestionRule,
    suggest_lr,
    suggestion_rule,
)
from autolr.finder._verdict import (
    CLIMB_SHARE,
    FULL_BATCH_CLIMB_SHARE,
    PROBE_RISE,
    START_RISE,
    probe_verdict,
)

__all__ = [
    "ADAPTIVE_RULE",
    "CLIMB_SHARE",
    "FULL_BATCH_CLIMB_SHARE",
    "MIN_RANGE_TEST_STEPS",
    "PROBE_RISE",
    "REFERENCE_BATCH",
    "RMSPROP_RULE",
    "SGD_RULE",
    "START_RISE",
    "SUGGESTION_DECAY",
    "Probe",
    "RangeTestResult",
    "SuggestionRule",
    "probe_verdict",
    "range_test",
    "suggest_lr",
    "suggestion_rule",
]
