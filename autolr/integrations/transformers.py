"""Hugging Face Transformers: run an ``autolr.Trial`` inside ``transformers.Trainer.train``.

Two pieces, used together in a ``loop:`` function::

    def train(trial):
        model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64))
        args = TrainingArguments("out", max_steps=300, eval_strategy="steps", eval_steps=100, report_to=[], seed=trial.seed)
        trainer = Trainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                          optimizers=optimizers(trial, model, total_steps=args.max_steps),
                          callbacks=[AutolrCallback(trial)])
        trainer.train()          # the trial's value: eval_loss of the last evaluation, as val_loss

The Trainer calls callbacks without catching what they raise, so ``autolr.TrialPruned`` leaves
``trainer.train()`` as itself and the trial ends PRUNED with its reason.

``seed=trial.seed``: the Trainer reseeds everything with ``args.seed`` (42 unless given) when it is
built, after autolr seeded the run, so without it every confirmation run on a "fresh seed" would
draw the same batches and dropout masks; :class:`AutolrCallback` warns when the two differ.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch
from transformers import TrainerCallback

from autolr.scheduler import StepScheduler

if TYPE_CHECKING:
    from autolr.trial import Trial

__all__ = ["AutolrCallback", "optimizers"]

logger = logging.getLogger(__name__)

# Evaluation bookkeeping the Trainer adds to the metrics: not validation metrics.
_EVAL_TIMING = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second")


class AutolrCallback(TrainerCallback):
    """Report a Trainer run to its ``autolr.Trial``: each optimizer step and each evaluation.

    The step's loss is read where it is cheapest and exact for the Trainer's own loss: a forward
    hook on the model keeps the ``loss`` of each training forward pass (a device tensor, no host
    sync), and ``on_pre_optimizer_step`` (gradients complete) hands ``trial.step`` their combination
    as the Trainer backpropagated it: summed when the Trainer passed ``num_items_in_batch`` (the
    model already divided by the tokens of the whole accumulated batch), averaged over the
    micro-batches otherwise. The Trainer's log history is no substitute: it holds a loss only every
    ``logging_steps``, and ``logging_nan_inf_filter`` replaces the inf/NaN losses the divergence
    guard must see. A ``compute_loss`` override or ``compute_loss_func`` whose loss is not the
    model's ``outputs.loss`` is not seen (the step then fails with a message saying so).

    The Trainer clips gradients (``max_grad_norm``, 1.0 by default) before ``on_pre_optimizer_step``,
    so ``grad_norm`` is the clipped norm; ``max_grad_norm=0`` records the raw one.

    Each evaluation during ``train()`` goes to ``trial.epoch`` with ``eval_<x>`` named ``val_<x>``
    (an ``evaluate()`` after training is not reported); a ``plateau`` schedule is given the
    objective's metric. The callback hands ``trial.epoch`` no timing metrics.

    Args:
        trial: the ``autolr.Trial`` the ``loop:`` function was called with.
    """

    def __init__(self, trial: Trial) -> None:
        self.trial = trial
        self._losses: list[tuple[torch.Tensor, bool]] = []  # (loss, already divided for accumulation)
        self._hook: torch.utils.hooks.RemovableHandle | None = None

    def on_train_begin(self, args, state, control, model: torch.nn.Module | None = None, **kwargs: Any) -> None:
        seed = getattr(self.trial, "seed", None)
        if seed is not None and args.seed != seed and not _WARNED_SEED:
            _WARNED_SEED.append(seed)  # once per process: every trial would say it
            logger.warning(
                "TrainingArguments(seed=%s) reseeded this run after autolr seeded it with %s: every trial and confirmation run "
                "trains on the same batches and dropout; pass TrainingArguments(..., seed=trial.seed)",
                args.seed,
                seed,
            )
        self._detach()
        self._losses = []
        self._hook = model.register_forward_hook(self._keep_loss, with_kwargs=True)

    def on_train_end(self, args, state, control, **kwargs: Any) -> None:
        self._detach()

    def on_pre_optimizer_step(self, args, state, control, **kwargs: Any) -> None:
        losses, self._losses = self._losses, []
        with self._detached_on_error():
            if not losses:
                raise ValueError(
                    "AutolrCallback: expected the model's training forward to return a loss (outputs.loss), got none this step; "
                    "give the batches labels, or compute the loss in the model rather than in a Trainer.compute_loss override"
                )
            self.trial.step(sum(loss if divided else loss / len(losses) for loss, divided in losses))

    def on_evaluate(self, args, state, control, metrics: Mapping[str, float] | None = None, **kwargs: Any) -> None:
        if self._hook is None:  # not inside train(): a final trainer.evaluate() is the user's business
            return
        values = {"val_" + name.removeprefix("eval_"): float(v) for name, v in (metrics or {}).items() if name.startswith("eval_") and name not in _EVAL_TIMING}
        with self._detached_on_error():
            if self.trial.metric not in values:
                raise ValueError(
                    f"AutolrCallback: expected the objective's metric {self.trial.metric!r} among the evaluation metrics "
                    f"(eval_x is named val_x), got {sorted(metrics or {})}"
                )
            self.trial.epoch(values)
            scheduler = kwargs.get("lr_scheduler")
            if isinstance(scheduler, StepScheduler):
                scheduler.report(values[self.trial.metric])

    def _keep_loss(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        if not (module.training and torch.is_grad_enabled()):
            return
        loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
        if isinstance(loss, torch.Tensor):
            self._losses.append((loss.detach(), kwargs.get("num_items_in_batch") is not None))

    def _detach(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    @contextlib.contextmanager
    def _detached_on_error(self) -> Iterator[None]:
        """The Trainer calls no ``on_train_end`` when a callback raises (``TrialPruned`` included): unhook here."""
        try:
            yield
        except BaseException:
            self._detach()
            raise


_WARNED_SEED: list[int] = []


def optimizers(trial: Trial, model: torch.nn.Module, total_steps: int) -> tuple[torch.optim.Optimizer, StepScheduler]:
    """The trial's optimizer and per-step scheduler, for ``Trainer(optimizers=...)``.

    The Trainer then ignores ``learning_rate``, ``lr_scheduler_type``, ``warmup_*`` and ``weight_decay``
    of its ``TrainingArguments``: the trial's ``params`` decide them. It steps the scheduler after
    every optimizer step, which is what this per-step schedule expects.

    Args:
        trial: the ``autolr.Trial``.
        model: the model to train (per-layer statistics get its parameter names); on its device
            already, as ``Trainer(optimizers=...)`` requires.
        total_steps: optimizer steps in the whole run: ``args.max_steps``, or epochs x
            ceil(batches per epoch / ``gradient_accumulation_steps``).
    """
    optimizer = trial.build_optimizer(model)
    return optimizer, trial.build_scheduler(optimizer, total_steps=total_steps)
