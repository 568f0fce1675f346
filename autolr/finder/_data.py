"""What the range test steps on, from what a user hands it: the batches (the same for every probe), the
step (``training_step``, or ``loss_fn`` on ``(inputs, targets)``) and the optimizer. Imports torch only.

- a ``Dataset`` and a ``batch_size``: autolr's own shuffled batches (:class:`autolr.batches.Batches`;
  a ``TensorDataset`` is sliced on the device, the fast path of the built-in tasks);
- a ``DataLoader``, used as it is (its collate, workers, batch size), or any iterable of batches: the
  batches the probes need are drawn once, seeded, and kept on the host, so that every probe sees the
  same batches (a loader that shuffles with its own generator would not repeat itself) and a loader's
  workers start once, not once a probe.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from autolr.batches import Batches, batch_size, describe_batch, move_to_device
from autolr.finder._runner import Step, same_randomness

__all__ = ["DatasetBatches", "DrawnBatches", "batches_for", "optimizer_for", "step_for"]

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]


class DatasetBatches:
    """A ``Dataset`` in shuffled batches of ``batch_size``, the same order (``seed``) for every probe."""

    def __init__(self, data: Dataset, batch_size: int, *, seed: int) -> None:
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.full_batch = batch_size >= len(data)

    def endless(self, device: torch.device) -> Iterator[Any]:
        batches = Batches(self.data, self.batch_size, device, seed=self.seed)
        while True:
            yield from batches


class DrawnBatches:
    """The first ``n`` batches of a loader or iterable, drawn once (seeded) and replayed in a cycle.

    A loader shorter than ``n`` batches is iterated again until there are ``n`` (a shuffling loader
    gives a new order each pass); a one-shot iterator is replayed as far as it went. One batch a pass is
    full-batch training.
    """

    def __init__(self, data: Iterable[Any], n: int, *, seed: int) -> None:
        n = max(n, 2)  # two at least: one batch a pass must be told from a pass cut short
        self.batches: list[Any] = []
        per_pass = 0
        with same_randomness(seed):  # a loader that shuffles with the global generator: in the seed's order
            for first_pass in itertools.chain([True], itertools.repeat(False)):
                drawn = list(itertools.islice(iter(data), n - len(self.batches)))
                per_pass = len(drawn) if first_pass else per_pass
                self.batches += drawn
                if not drawn or len(self.batches) >= n:
                    break
        if not self.batches:
            raise ValueError(f"data: expected at least one batch, got an empty {type(data).__name__}")
        self.full_batch = per_pass == 1
        self.batch_size = batch_size(self.batches[0])

    def endless(self, device: torch.device) -> Iterator[Any]:
        # kept on the host as the loader made them (pinned, if it pins): one copy a step, as training does
        non_blocking = device.type == "cuda"
        for batch in itertools.cycle(self.batches):
            yield move_to_device(batch, device, non_blocking=non_blocking)


def batches_for(data: object, batch_size: int | None, *, seed: int, needed: int) -> DatasetBatches | DrawnBatches:
    """The batch source for ``data`` (a Dataset with ``batch_size``, a DataLoader, or batches)."""
    if isinstance(data, DataLoader) or not isinstance(data, Dataset):
        if batch_size is not None:
            raise ValueError(
                f"batch_size: expected None for {_kind(data)} (its batches are used as they are), got {batch_size!r}; drop batch_size, or pass a Dataset"
            )
        if not isinstance(data, Iterable):
            raise TypeError(f"data: expected a Dataset, a DataLoader or an iterable of batches, got a {type(data).__name__}")
        return DrawnBatches(data, needed, seed=seed)
    if batch_size is None or not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r} (a Dataset needs one; a DataLoader brings its own)")
    if isinstance(data, IterableDataset):  # a stream of samples: batched by a plain loader
        return DrawnBatches(DataLoader(data, batch_size=batch_size), needed, seed=seed)
    return DatasetBatches(data, batch_size, seed=seed)


def _kind(data: object) -> str:
    return "a DataLoader" if isinstance(data, DataLoader) else f"an iterable of batches ({type(data).__name__})"


def step_for(loss_fn: Callable[[Any, Any], torch.Tensor] | None, training_step: Step | None) -> Step:
    """``training_step`` when given, else ``loss_fn(model(inputs), targets)`` on ``(inputs, targets)``."""
    if training_step is not None:
        if not callable(training_step):
            raise TypeError(f"training_step: expected a function (model, batch) -> scalar loss tensor, got a {type(training_step).__name__}")
        return training_step
    if loss_fn is None:
        raise ValueError(
            "loss_fn, training_step: expected one of them, got neither; pass loss_fn=fn(outputs, targets) for (inputs, targets) batches, or training_step=fn(model, batch) -> loss"
        )
    if not callable(loss_fn):
        raise TypeError(f"loss_fn: expected a function (outputs, targets) -> scalar loss tensor, got a {type(loss_fn).__name__}")

    def loss_of_pair(model: torch.nn.Module, batch: Any) -> torch.Tensor:
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise TypeError(
                f"batch: expected (inputs, targets) for loss_fn(model(inputs), targets), got {describe_batch(batch)}; "
                "for batches of another structure pass training_step=fn(model, batch) -> scalar loss tensor"
            )
        inputs, targets = batch
        return loss_fn(model(inputs), targets)

    return loss_of_pair


def optimizer_for(model: torch.nn.Module, optimizer: torch.optim.Optimizer | OptimizerFactory) -> torch.optim.Optimizer:
    """``optimizer`` itself, or the one a factory builds on ``model.parameters()``."""
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    if not callable(optimizer):
        raise TypeError(f"optimizer: expected a torch.optim.Optimizer or a function params -> optimizer, got a {type(optimizer).__name__}")
    built = optimizer(model.parameters())
    if not isinstance(built, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer: the factory returned a {type(built).__name__}, expected a torch.optim.Optimizer (e.g. lambda params: torch.optim.AdamW(params, lr=1e-3))"
        )
    return built
