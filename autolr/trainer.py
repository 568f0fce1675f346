"""The training loop. Imports torch only; whoever watches hooks in through :class:`TrainerCallback`.

One loop that reads top to bottom: batches, forward, backward, gradient norm, optimizer step,
scheduler step; every ``check_every`` steps the window of losses and gradient norms comes to the host
in one transfer, where the :class:`DivergenceGuard` looks at it and callbacks receive it; at each epoch
end the validation metrics are computed and handed to callbacks, which may stop the run by raising.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import torch
from torch.utils.data import Dataset

from autolr.batches import Batches
from autolr.grads import FlatGradients, grad_norms
from autolr.guard import Diverged, DivergenceGuard
from autolr.tasks import Task

__all__ = ["TrainResult", "Trainer", "TrainerCallback", "evaluate", "pick_device"]


class TrainerCallback:
    """Hooks; each default does nothing. A hook may raise to stop training (the trainer re-raises)."""

    def on_train_start(self, total_steps: int, steps_per_epoch: int) -> None: ...

    def on_steps(self, first_step: int, values: Mapping[str, Sequence[float]]) -> None:
        """Per-step values (``train_loss``, ``lr``, ``grad_norm``) for a window of consecutive steps."""

    def on_layer_stats(self, step: int, stats: Mapping[str, float]) -> None:
        """Per-layer ``grad_norm/NAME``, ``weight_norm/NAME`` and ``update_ratio/NAME`` at ``step``."""

    def on_epoch_end(self, epoch: int, step: int, metrics: Mapping[str, float]) -> None:
        """Validation metrics (``val_loss``, ``val_<metric>``) after epoch ``epoch`` (1-based)."""


@dataclasses.dataclass
class TrainResult:
    history: list[dict[str, float]]
    steps: int

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.no_grad()
def evaluate(task: Task, data: Dataset, device: torch.device, *, batch_size: int = 4096) -> dict[str, float]:
    """``val_loss`` and each task metric as ``val_<name>``, over the whole dataset at once."""
    task.model.eval()
    try:
        outputs, targets = [], []
        for x, y in Batches(data, batch_size, device, seed=0, shuffle=False):
            outputs.append(task.model(x))
            targets.append(y)
        out, tgt = torch.cat(outputs), torch.cat(targets)
        metrics = {"val_loss": float(task.loss_fn(out, tgt))}
        for name, fn in task.metrics.items():
            metrics[f"val_{name}"] = float(fn(out, tgt))
        return metrics
    finally:
        task.model.train()


class Trainer:
    """Trains ``task.model`` with a built optimizer and per-step scheduler.

    Args:
        epochs, batch_size: the budget.
        device: where to train (``pick_device()`` by default).
        guard: a :class:`DivergenceGuard`, or None to train through anything.
        callbacks: watchers (tracking, pruning), called in order.
        check_every: steps per host transfer of the loss/grad-norm window. On CUDA the default is 16,
            so the loop never waits on the GPU step by step; on CPU 4 (there is no sync to avoid).
        layer_stats_every: per-layer statistics every N steps (0: never).
        grad_clip: clip the global gradient norm to this (None: no clipping).
        monitor: the validation metric given to ``scheduler.report`` (plateau schedules).
        seed: seeds the batch order.
    """

    def __init__(
        self,
        *,
        epochs: int,
        batch_size: int,
        device: torch.device | None = None,
        guard: DivergenceGuard | None = None,
        callbacks: Sequence[TrainerCallback] = (),
        check_every: int | None = None,
        layer_stats_every: int = 0,
        grad_clip: float | None = None,
        monitor: str = "val_loss",
        seed: int = 0,
    ) -> None:
        self.epochs = epochs
        self.batch_size = batch_size
        self.device = device or pick_device()
        self.guard = guard
        self.callbacks = list(callbacks)
        self.check_every = check_every or (16 if self.device.type == "cuda" else 4)
        self.layer_stats_every = layer_stats_every
        self.grad_clip = grad_clip
        self.monitor = monitor
        self.seed = seed

    def steps_per_epoch(self, task: Task) -> int:
        return math.ceil(len(task.train_data) / self.batch_size)

    def fit(self, task: Task, optimizer: torch.optim.Optimizer, scheduler) -> TrainResult:
        model = task.model.to(self.device)
        _move_optimizer_state(optimizer, self.device)
        params = [p for p in model.parameters() if p.requires_grad]
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        batches = Batches(task.train_data, self.batch_size, self.device, seed=self.seed)
        total_steps = self.epochs * len(batches)
        for cb in self.callbacks:
            cb.on_train_start(total_steps, len(batches))

        model.train()
        grads = FlatGradients(params)
        history: list[dict[str, float]] = []
        window: list[tuple[torch.Tensor, float, torch.Tensor]] = []
        step = 0
        for epoch in range(1, self.epochs + 1):
            for x, y in batches:
                lr = optimizer.param_groups[0]["lr"]  # a Python float: no device sync
                grads.zero(optimizer)
                loss = task.loss_fn(model(x), y)
                loss.backward()
                total_norm = grads.total_norm()  # one op once the flat buffer is adopted
                if self.grad_clip is not None:
                    torch.nn.utils.clip_grads_with_norm_(params, self.grad_clip, total_norm)
                snapshot = self._layer_snapshot(step, params)
                norms = grad_norms(params) if snapshot is not None else []
                optimizer.step()
                scheduler.step()
                if snapshot is not None:
                    self._emit_layer_stats(step, names, params, norms, snapshot)
                window.append((loss.detach(), lr, total_norm))
                step += 1
                if len(window) == self.check_every:
                    self._flush(step - len(window), window)
            self._flush(step - len(window), window)
            metrics = evaluate(task, task.val_data, self.device)
            if self.guard is not None and not math.isfinite(metrics["val_loss"]):
                raise Diverged(step - 1, f"diverged: val_loss {metrics['val_loss']} after epoch {epoch}")
            if hasattr(scheduler, "report"):
                scheduler.report(metrics.get(self.monitor, metrics["val_loss"]))
            history.append(metrics)
            for cb in self.callbacks:
                cb.on_epoch_end(epoch, step, metrics)
        return TrainResult(history=history, steps=step)

    def _flush(self, first_step: int, window: list) -> None:
        """One host transfer for the whole window, then the guard, then the callbacks."""
        if not window:
            return
        n = len(window)
        host = torch.stack([w[0] for w in window] + [w[2] for w in window]).float().tolist()  # the one sync point per window
        values = {"train_loss": host[:n], "lr": [w[1] for w in window], "grad_norm": host[n:]}
        window.clear()
        diverged = self.guard.check(first_step, values["train_loss"], values["grad_norm"]) if self.guard else None
        if diverged is not None:
            cut = diverged.step - first_step + 1  # the watchers see the curve up to the divergent step
            values = {k: v[:cut] for k, v in values.items()}
        for cb in self.callbacks:
            cb.on_steps(first_step, values)
        if diverged is not None:
            raise diverged

    def _layer_snapshot(self, step: int, params: Sequence[torch.nn.Parameter]) -> list[torch.Tensor] | None:
        if not self.layer_stats_every or step % self.layer_stats_every:
            return None
        return [p.detach().clone() for p in params]

    def _emit_layer_stats(self, step, names, params, norms, before) -> None:
        with torch.no_grad():
            weight = torch.stack(torch._foreach_norm([p.detach() for p in params]))
            update = torch.stack(torch._foreach_norm(torch._foreach_sub([p.detach() for p in params], before)))
            grad = torch.stack(norms) if len(norms) == len(params) else torch.zeros_like(weight)
            ratio = update / weight.clamp_min(1e-12)
            rows = torch.stack([grad, weight, ratio]).tolist()
        stats = {}
        for i, name in enumerate(names):
            stats[f"grad_norm/{name}"] = rows[0][i]
            stats[f"weight_norm/{name}"] = rows[1][i]
            stats[f"update_ratio/{name}"] = rows[2][i]
        for cb in self.callbacks:
            cb.on_layer_stats(step, stats)


def _move_optimizer_state(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    for state in optimizer.state.values():
        for k, v in state.items():
            if isinstance(v, torch.Tensor) and k != "step":
                state[k] = v.to(device)
