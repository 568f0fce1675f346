"""PyTorch Lightning: run an ``autolr.Trial`` inside ``lightning.pytorch.Trainer.fit``.

Two pieces, used together in a ``loop:`` function::

    class Model(L.LightningModule):
        def __init__(self, trial):
            super().__init__()
            self.trial, self.net = trial, torch.nn.Linear(8, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.mse_loss(self.net(x), y)

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", F.mse_loss(self.net(x), y))

        def configure_optimizers(self):
            return configure_optimizers(self.trial, self)   # the trial's optimizer + per-step schedule

    def train(trial):
        trainer = L.Trainer(max_epochs=3, callbacks=[AutolrCallback(trial)])
        trainer.fit(Model(trial), train_loader, val_loader)
        return trainer.callback_metrics["val_loss"].item()

Lightning re-raises an exception from a callback unchanged (after its ``on_exception`` hooks and
teardown), so ``autolr.TrialPruned`` leaves ``trainer.fit`` as itself and the trial ends PRUNED with
its reason. One optimizer per module (the trial's); ``lightning.pytorch`` only, not the older
``pytorch_lightning`` package, whose ``Trainer`` rejects callbacks of the other namespace.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.trainer.states import TrainerFn

from autolr.optimizers import optimizer_mode
from autolr.scheduler import StepScheduler

if TYPE_CHECKING:
    from autolr.trial import Trial

__all__ = ["AutolrCallback", "configure_optimizers"]


class AutolrCallback(pl.Callback):
    """Report a Lightning run to its ``autolr.Trial``: each optimizer step and each validation.

    The step's loss is the sum of the losses Lightning hands ``on_before_backward`` since the last
    optimizer step. With ``accumulate_grad_batches=N`` each of those is a micro-batch's loss divided
    by ``N``, so the sum is the mean loss of the batches whose gradients the optimizer is about to
    apply: exactly the loss of the step, whatever the accumulation, and in manual optimization too.
    It stays a device tensor (the trial reads it back once per window of steps, not once per step).
    ``trial.step`` runs in ``on_before_optimizer_step``: the gradients are complete and, under
    ``16-mixed`` precision, already unscaled; gradient clipping has not run yet, so ``grad_norm``
    is the norm before clipping.

    After each validation of ``fit`` (not the sanity check, not ``trainer.validate``),
    ``trial.epoch`` gets the logged metrics whose names start with ``val`` (``self.log("val_loss",
    ...)`` in ``validation_step``); a ``plateau`` schedule is given the objective's metric.

    An optimizer with a train/eval switch (``schedulefree_adamw``) is put in eval mode for every
    validation of ``fit`` and back in train mode after it, as autolr's trainer does: it evaluates at
    other weights than it trains at, and Lightning switches only the module (a ``trainer.validate()``
    afterwards leaves the mode to the caller).

    Args:
        trial: the ``autolr.Trial`` the ``loop:`` function was called with.
    """

    def __init__(self, trial: Trial) -> None:
        self.trial = trial
        self._step_loss: torch.Tensor | None = None  # the summed backward losses of the current step

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._step_loss = None

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        loss = _unscaled(trainer, loss.detach())
        self._step_loss = loss if self._step_loss is None else self._step_loss + loss

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer) -> None:
        if self._step_loss is None:  # training_step returned None: Lightning skips backward, nothing to record
            return
        loss, self._step_loss = self._step_loss, None
        self.trial.step(loss)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING:  # a trainer.validate() afterwards is the user's: its mode is theirs
            for optimizer in trainer.optimizers:
                optimizer_mode(optimizer, "eval")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            return
        for optimizer in trainer.optimizers:
            optimizer_mode(optimizer, "train")
        if trainer.sanity_checking:
            return
        metrics = _validation_metrics(trainer.callback_metrics)
        metric = _objective_name(self.trial.metric, metrics, trainer.callback_metrics)
        self.trial.epoch(metrics)
        for config in trainer.lr_scheduler_configs:
            if isinstance(config.scheduler, StepScheduler):
                config.scheduler.report(metrics[metric])


def configure_optimizers(trial: Trial, module_or_params: Any, total_steps: int | None = None) -> dict[str, Any]:
    """The trial's optimizer and per-step scheduler, as ``LightningModule.configure_optimizers`` returns them.

    Args:
        trial: the ``autolr.Trial``.
        module_or_params: the ``LightningModule`` (per-layer statistics get its parameter names), or
            its parameters / param groups.
        total_steps: optimizer steps in the whole run; by default the trainer's
            ``estimated_stepping_batches`` (epochs x batches / accumulation, or ``max_steps``).

    Raises:
        ValueError: ``total_steps`` is missing and cannot be taken from the trainer.
    """
    if total_steps is None:
        total_steps = _estimated_steps(module_or_params)
    optimizer = trial.build_optimizer(module_or_params)
    scheduler = trial.build_scheduler(optimizer, total_steps=total_steps)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}


def _estimated_steps(module_or_params: Any) -> int:
    trainer = getattr(module_or_params, "_trainer", None)  # `.trainer` raises when the module is not attached
    if trainer is None:
        raise ValueError(
            "configure_optimizers(trial, ...): expected total_steps, or a LightningModule attached to a Trainer "
            f"(called from its configure_optimizers), got a {type(module_or_params).__name__} and no total_steps"
        )
    steps = trainer.estimated_stepping_batches
    if not math.isfinite(steps):
        raise ValueError(
            "configure_optimizers(trial, ...): the Trainer's run has no known length (max_epochs=-1 and no max_steps); "
            "give Trainer(max_steps=...) or pass total_steps="
        )
    return int(steps)


def _unscaled(trainer: pl.Trainer, loss: torch.Tensor) -> torch.Tensor:
    """The loss before ``16-mixed``'s gradient scaler multiplied it (the hook sees the scaled one)."""
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    if scaler is None or not scaler.is_enabled():
        return loss
    scale = scaler._get_scale_async() if hasattr(scaler, "_get_scale_async") else scaler.get_scale()  # no host sync
    return loss / scale


def _validation_metrics(logged: dict[str, Any]) -> dict[str, float]:
    """The scalar metrics logged under ``val...`` names (``callback_metrics`` also holds training ones)."""
    return {name: float(value) for name, value in logged.items() if name.startswith("val") and torch.as_tensor(value).numel() == 1}


def _objective_name(metric: str, metrics: dict[str, float], logged: dict[str, Any]) -> str:
    if metric in metrics:
        return metric
    raise ValueError(
        f"AutolrCallback: expected the objective's metric {metric!r} among the validation metrics, got {sorted(logged)}; "
        f"log it in validation_step with self.log({metric!r}, value)"
    )
