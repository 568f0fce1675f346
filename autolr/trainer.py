"""The training loop. Imports torch only; whoever watches hooks in through :class:`TrainerCallback`.

One loop that reads top to bottom: batches, forward (the task's ``training_step``, or ``loss_fn`` on
``(inputs..., target)``), backward (``accumulate`` micro-batches per step, under autocast when
``precision`` asks), gradient norm, optimizer step, scheduler step; every ``check_every`` steps the
window of losses and gradient norms comes to the host in one transfer (:class:`~autolr.steps.StepRecorder`),
where the divergence guard looks at it and callbacks receive it; at each epoch end the validation
metrics are computed and handed to callbacks, which may stop the run by raising.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from autolr import keys
from autolr.batches import Batches, LoaderBatches, batch_size, describe_batch, move_to_device
from autolr.config import PRECISIONS
from autolr.grads import FlatGradients
from autolr.guard import Diverged, DivergenceGuard
from autolr.optimizers import optimizer_mode
from autolr.steps import StepRecorder
from autolr.tasks import Task

__all__ = [
    "BatchError",
    "TrainResult",
    "Trainer",
    "TrainerCallback",
    "as_loss",
    "batched",
    "evaluate",
    "is_map_dataset",
    "pick_device",
    "training_step_of",
    "validation_batch_metrics",
    "worker_device",
]


_NO_AUTOCAST = contextlib.nullcontext()  # reusable: fp32 steps allocate no context manager


class BatchError(TypeError):
    """A batch the task's steps cannot take, or a step that returned what is not a loss: ``where`` (the
    hook or the data), what it ``expected`` and what it was ``given``, and the hook to write."""

    def __init__(self, where: str, expected: str, given: str) -> None:
        self.where, self.expected, self.given = where, expected, given
        super().__init__(f"{where}: expected {expected}, got {given}")


class TrainerCallback:
    """Hooks; each default does nothing. A hook may raise to stop training (the trainer re-raises)."""

    def on_train_start(self, total_steps: int, steps_per_epoch: int) -> None: ...

    def on_steps(self, first_step: int, values: Mapping[str, Sequence[float]]) -> None:
        """Per-step values (``train_loss``, ``lr``, ``grad_norm``) for a window of consecutive steps."""

    def on_layer_stats(self, step: int, stats: Mapping[str, float]) -> None:
        """Per-layer ``weight_grad_norm.NAME``, ``weight_norm.NAME`` and ``weight_update_ratio.NAME`` at ``step``."""

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


def worker_device(name: str, worker: int, *, cuda_devices: int | None = None) -> torch.device:
    """The device worker ``worker`` of ``--jobs N`` trains on: ``cuda`` (or ``auto`` where torch sees a
    GPU) spreads the workers over the visible GPUs, worker i on ``cuda:(i % count)``, so that N workers
    on N GPUs do not all queue on the first; anything else as :func:`pick_device`.

    Args:
        cuda_devices: the number of visible GPUs (default: ``torch.cuda.device_count()``).
    """
    device = pick_device(name)
    if device.type != "cuda" or device.index is not None:
        return device
    count = torch.cuda.device_count() if cuda_devices is None else cuda_devices
    return torch.device("cuda", worker % count) if count > 0 else device


# --- from a batch to a loss ------------------------------------------------------------------------


def as_loss(value: Any, hook: str = "training_step") -> torch.Tensor:
    """The scalar loss in what a step returned: a tensor, or anything with a ``loss`` (a Hugging Face
    ``ModelOutput``, a dict with ``"loss"``)."""
    loss = value if isinstance(value, torch.Tensor) else value.get("loss") if isinstance(value, Mapping) else getattr(value, "loss", None)
    if not isinstance(loss, torch.Tensor):
        raise BatchError(hook, "a scalar loss tensor (or an object with .loss)", type(value).__name__)
    if loss.numel() != 1:
        raise BatchError(hook, "a scalar loss", f"a tensor of shape {tuple(loss.shape)} (reduce it, e.g. .mean())")
    return loss if loss.dim() == 0 else loss.reshape(())  # no op for the usual 0-d loss: this runs every step


def _split(batch: Any) -> tuple[tuple[Any, ...], Any]:
    """``(inputs..., target)`` of a tuple or list batch, for ``loss_fn(model(*inputs), target)``."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return tuple(batch[:-1]), batch[-1]
    raise BatchError(
        "batches",
        "(inputs..., target) tuples, which loss_fn(model(inputs), target) takes, or a Task with a training_step(model, batch) -> loss "
        "(and a validation_step(model, batch) -> {'loss': ...}) for these batches",
        describe_batch(batch),
    )


def training_step_of(task: Task) -> Callable[[torch.nn.Module, Any], torch.Tensor]:
    """The task's step from a batch to its scalar loss."""
    if task.training_step is not None:
        user_step = task.training_step
        return lambda model, batch: as_loss(user_step(model, batch))
    loss_fn = task.loss_fn

    def step(model: torch.nn.Module, batch: Any) -> torch.Tensor:
        inputs, target = _split(batch)
        return as_loss(loss_fn(model(*inputs), target), "loss_fn")

    return step


# --- validation --------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(task: Task, data: Any, device: torch.device, *, batch_size: int = 4096, autocast: Any = None) -> dict[str, float]:
    """``val_loss`` and each metric as ``val_<name>``, the model in eval mode (put back in train mode).

    A ``Dataset`` of ``(inputs, target)`` with ``loss_fn`` is evaluated as a whole (its outputs
    concatenated, so a metric such as an AUC sees every sample at once); anything else streams batch by
    batch, each value averaged over the set weighted by batch size.
    """
    task.model.eval()
    try:
        with autocast or contextlib.nullcontext():
            if task.validation_step is None and task.loss_fn is not None and is_map_dataset(data):
                return _evaluate_whole(task, data, device, batch_size)
            return _evaluate_streaming(task, _batches_of(data, batch_size, device, shuffle=False), device)
    finally:
        task.model.train()


@torch.no_grad()
def validation_batch_metrics(task: Task, size: int, device: torch.device) -> dict[str, float]:
    """The validation metrics of the first validation batch alone (the pre-flight's check)."""
    task.model.eval()
    try:
        first = itertools.islice(_batches_of(task.val_data, size, device, shuffle=False), 1)
        return _evaluate_streaming(task, first, device)
    finally:
        task.model.train()


def _evaluate_whole(task: Task, data: Dataset, device: torch.device, size: int) -> dict[str, float]:
    outputs, targets = [], []
    for batch in Batches(data, size, device, seed=0, shuffle=False):
        inputs, target = _split(batch)
        outputs.append(task.model(*inputs))
        targets.append(target)
    out, tgt = torch.cat(outputs), torch.cat(targets)
    metrics = {"val_loss": float(task.loss_fn(out, tgt))}
    for name, fn in task.metrics.items():
        metrics[keys.val_metric(name)] = float(fn(out, tgt))
    return metrics


def _evaluate_streaming(task: Task, batches: Iterable[Any], device: torch.device) -> dict[str, float]:
    step = _validation_step_of(task)
    sums: dict[str, Any] = {}
    seen = 0
    for batch in batches:
        n = batch_size(batch)
        for name, value in step(task.model, batch).items():
            value = value.detach().float().reshape(()) if isinstance(value, torch.Tensor) else float(value)
            sums[name] = sums.get(name, 0.0) + value * n  # tensors stay on the device: one sync at the end
        seen += n
    if not seen:
        raise BatchError("val_data", "at least one validation batch", "none")
    if "loss" not in sums:
        raise BatchError("validation_step", "a dict with 'loss'", f"keys {sorted(sums)}")
    return {keys.val_metric(name): float(total) / seen for name, total in sums.items()}


def _validation_step_of(task: Task) -> Callable[[torch.nn.Module, Any], Mapping[str, Any]]:
    if task.validation_step is not None:
        user_step = task.validation_step

        def checked(model: torch.nn.Module, batch: Any) -> Mapping[str, Any]:
            values = user_step(model, batch)
            if not isinstance(values, Mapping):
                raise BatchError("validation_step", "a dict {'loss': ..., name: ...}", type(values).__name__)
            return values

        return checked
    if task.loss_fn is not None and task.training_step is None:

        def by_loss_fn(model: torch.nn.Module, batch: Any) -> Mapping[str, Any]:
            inputs, target = _split(batch)
            out = model(*inputs)
            return {"loss": task.loss_fn(out, target), **{name: fn(out, target) for name, fn in task.metrics.items()}}

        return by_loss_fn
    train_step = training_step_of(task)
    return lambda model, batch: {"loss": train_step(model, batch)}


# --- data -------------------------------------------------------------------------------------------


def is_map_dataset(data: Any) -> bool:
    """A Dataset autolr batches itself (with a length, indexable); anything else is iterated as it is."""
    return isinstance(data, Dataset) and not isinstance(data, IterableDataset) and hasattr(data, "__len__")


def batched(data: Any, size: int) -> Any:
    """A user's data as batches: an iterable dataset yields samples, which the default collate makes
    batches of ``size``; a DataLoader or other iterable of batches is used as it is."""
    return DataLoader(data, batch_size=size) if isinstance(data, IterableDataset) else data


def _batches_of(data: Any, size: int, device: torch.device, *, shuffle: bool, seed: int = 0, steps_per_epoch: int | None = None):
    """autolr's own batches of a ``Dataset``; a ``DataLoader`` or other iterable used as it is."""
    if is_map_dataset(data):
        return Batches(data, size, device, seed=seed, shuffle=shuffle)
    data = batched(data, size)
    if not shuffle:  # validation: one plain pass, whether or not the data has a length (it must end)
        return (move_to_device(batch, device) for batch in data)
    return LoaderBatches(data, device, steps_per_epoch=steps_per_epoch)


def _chunks(batches: Iterable[Any], n: int) -> Iterator[list[Any]]:
    """Consecutive groups of ``n`` batches (the last one may be shorter)."""
    group: list[Any] = []
    for batch in batches:
        group.append(batch)
        if len(group) == n:
            yield group
            group = []
    if group:
        yield group


# --- the trainer --------------------------------------------------------------------------------------


class Trainer:
    """Trains ``task.model`` with a built optimizer and per-step scheduler.

    Args:
        epochs, batch_size: the budget (``batch_size`` for ``Dataset``s; a ``DataLoader`` keeps its own).
        device: where to train (``pick_device()`` by default).
        guard: a :class:`DivergenceGuard`, or None to train through anything.
        callbacks: watchers (tracking, pruning), called in order.
        check_every: steps per host transfer of the loss/grad-norm window. On CUDA the default is 16,
            so the loop never waits on the GPU step by step; on CPU 4 (there is no sync to avoid).
        layer_stats_every: per-layer statistics every N steps (0: never).
        grad_clip: clip the global gradient norm to this (None: no clipping).
        monitor: the validation metric given to ``scheduler.report`` (plateau schedules).
        seed: seeds the batch order.
        precision: ``fp32``, ``bf16`` (autocast) or ``fp16`` (autocast with a gradient scaler; CUDA only).
        accumulate: micro-batches per optimizer step (their mean loss is the step's ``train_loss``).
        max_steps: stop after this many optimizer steps (the epoch under way is still validated).
        steps_per_epoch: batches per epoch for data without a length (an iterable dataset).
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
        precision: str = "fp32",
        accumulate: int = 1,
        max_steps: int | None = None,
        steps_per_epoch: int | None = None,
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
        if precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {list(PRECISIONS)}, got {precision!r}")
        if precision == "fp16" and self.device.type != "cuda":
            raise ValueError("precision: fp16 needs CUDA (its gradient scaler); on the CPU use bf16")
        if accumulate < 1:
            raise ValueError(f"accumulate: expected an integer >= 1, got {accumulate!r}")
        self.precision, self.accumulate = precision, accumulate
        self.max_steps, self.data_steps_per_epoch = max_steps, steps_per_epoch

    def train_batches(self, task: Task):
        return _batches_of(task.train_data, self.batch_size, self.device, shuffle=True, seed=self.seed, steps_per_epoch=self.data_steps_per_epoch)

    def steps_per_epoch(self, task: Task) -> int:
        """Optimizer steps per epoch (counted, not built: a TensorDataset is not copied to the device)."""
        data = task.train_data
        batches = math.ceil(len(data) / self.batch_size) if is_map_dataset(data) else len(self.train_batches(task))
        return math.ceil(batches / self.accumulate)

    def total_steps(self, task: Task) -> int:
        """Optimizer steps of the whole run: epochs, or ``max_steps`` if that comes first."""
        total = self.epochs * self.steps_per_epoch(task)
        return total if self.max_steps is None else min(total, self.max_steps)

    def autocast(self):
        if self.precision == "fp32":
            return _NO_AUTOCAST
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)

    def fit(self, task: Task, optimizer: torch.optim.Optimizer, scheduler) -> TrainResult:
        model = task.model.to(self.device)
        _move_optimizer_state(optimizer, self.device)
        params = [p for p in model.parameters() if p.requires_grad]
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        batches = self.train_batches(task)
        per_epoch = math.ceil(len(batches) / self.accumulate)
        total_steps = self.total_steps(task)
        for cb in self.callbacks:
            cb.on_train_start(total_steps, per_epoch)

        step_loss = training_step_of(task)
        scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        recorder = StepRecorder(params, names, guard=self.guard, watchers=self.callbacks, check_every=self.check_every,
                                layer_stats_every=self.layer_stats_every, ignore_nonfinite_grad_norm=scaler is not None)  # fmt: skip
        model.train()
        optimizer_mode(optimizer, "train")  # schedule-free optimizers train at other weights than they evaluate at
        grads = FlatGradients(params)
        history: list[dict[str, float]] = []
        for epoch in range(1, self.epochs + 1):
            for group in _chunks(batches, self.accumulate):
                lr = optimizer.param_groups[0]["lr"]  # a Python float: no device sync
                grads.zero(optimizer)
                loss = self._forward_backward(model, group, step_loss, scaler)
                if scaler is not None:
                    scaler.unscale_(optimizer)
                total_norm = grads.total_norm()  # one op once the flat buffer is adopted
                if self.grad_clip is not None:
                    torch.nn.utils.clip_grads_with_norm_(params, self.grad_clip, total_norm)
                recorder.before_update()
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                scheduler.step()
                recorder.record(loss, lr, total_norm)
                if recorder.step >= total_steps:
                    break
            recorder.flush()
            metrics = self._validate(task, optimizer)
            step = recorder.step
            if self.guard is not None and not math.isfinite(metrics["val_loss"]):
                raise Diverged(step - 1, f"diverged: val_loss {metrics['val_loss']} after epoch {epoch}")
            if hasattr(scheduler, "report"):
                scheduler.report(metrics.get(self.monitor, metrics["val_loss"]))
            history.append(metrics)
            for cb in self.callbacks:
                cb.on_epoch_end(epoch, step, metrics)
            if step >= total_steps:
                break
        return TrainResult(history=history, steps=recorder.step)

    def _forward_backward(self, model, group: list[Any], step_loss, scaler) -> torch.Tensor:
        """Backward over one step's micro-batches; returns their mean loss (detached). One micro-batch
        (the usual case) costs no tensor op beyond the model's: this runs every step."""
        if len(group) == 1:
            with self.autocast():
                loss = step_loss(model, group[0])
            (scaler.scale(loss) if scaler is not None else loss).backward()
            return loss.detach()
        total = None
        for batch in group:
            with self.autocast():
                micro = step_loss(model, batch) / len(group)
            (scaler.scale(micro) if scaler is not None else micro).backward()
            total = micro.detach().float() if total is None else total + micro.detach().float()
        return total

    def _validate(self, task: Task, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """Validation metrics; an optimizer with its own train/eval weights (schedule-free) in eval."""
        optimizer_mode(optimizer, "eval")
        try:
            size = 4096 if task.validation_step is None and task.loss_fn is not None else self.batch_size
            return evaluate(task, task.val_data, self.device, batch_size=size, autocast=self.autocast())
        finally:
            optimizer_mode(optimizer, "train")


def _move_optimizer_state(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    for state in optimizer.state.values():
        for k, v in state.items():
            if isinstance(v, torch.Tensor) and k != "step":
                state[k] = v.to(device)
