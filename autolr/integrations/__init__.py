"""Thin adapters that let a framework's own trainer run an ``autolr.Trial`` (``loop:`` studies).

Each adapter lives in its own module and imports its framework only there, so ``import
autolr.integrations`` costs nothing and the frameworks stay optional extras:

- :mod:`autolr.integrations.lightning` (``pip install 'autolr[lightning]'``): ``AutolrCallback`` and
  ``configure_optimizers`` for a ``lightning.pytorch.Trainer``;
- :mod:`autolr.integrations.transformers` (``pip install 'autolr[transformers]'``): ``AutolrCallback``
  and ``optimizers`` for a ``transformers.Trainer``.

Both do what a hand-written loop does with the trial: build the optimizer and per-step scheduler from
``trial.params``, call ``trial.step(loss)`` once per optimizer step (after backward, before the
update), ``trial.epoch(metrics)`` after each validation, and let ``autolr.TrialPruned`` propagate out
of the framework's ``fit``/``train`` so the trial ends PRUNED with its reason.
"""

from __future__ import annotations

__all__ = ["lightning", "transformers"]
