"""Batches: where a training step's inputs come from, and how they reach the device. Imports torch only.

- :class:`Batches`: autolr's own mini-batches of a ``Dataset`` (shuffled by a seed; a ``TensorDataset``
  of inputs and targets lives on the device and is sliced directly, with no per-sample collation);
- :class:`LoaderBatches`: a user's own ``DataLoader`` or iterable of batches, used as it is (its
  collate, workers and batch size), moved to the device batch by batch;
- :func:`move_to_device` and :func:`batch_size`: for batches of any structure (tensors in tuples,
  lists, dicts, named tuples, nested).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

__all__ = ["Batches", "LoaderBatches", "UnsizedData", "batch_size", "describe_batch", "move_to_device"]


def move_to_device(batch: Any, device: torch.device | str, *, non_blocking: bool = False) -> Any:
    """``batch`` with every tensor in it on ``device``, its structure kept: tuples, lists, dicts and
    named tuples are rebuilt with their own type, nested ones too; anything else is left as it is."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, Mapping):
        moved = {key: move_to_device(value, device, non_blocking=non_blocking) for key, value in batch.items()}
        return moved if type(batch) is dict else _rebuild_mapping(batch, moved)
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a named tuple takes its fields as arguments
        return type(batch)(*(move_to_device(v, device, non_blocking=non_blocking) for v in batch))
    if isinstance(batch, (tuple, list)):
        return type(batch)(move_to_device(v, device, non_blocking=non_blocking) for v in batch)
    return batch


def _rebuild_mapping(original: Mapping, moved: dict) -> Mapping:
    try:
        return type(original)(moved)  # OrderedDict, defaultdict-free subclasses, BatchEncoding-like
    except TypeError:
        return moved  # a mapping type that cannot be built from a dict: a plain dict holds the same


def batch_size(batch: Any) -> int:
    """The number of samples in ``batch``: the leading dimension of the first tensor found in it
    (depth first, in order)."""
    tensor = _first_tensor(batch)
    if tensor is None:
        raise TypeError(f"batch: expected a tensor somewhere in it (to count its samples), got {describe_batch(batch)}")
    if tensor.dim() == 0:
        raise TypeError("batch: expected its first tensor to have a leading batch dimension, got a 0-dimensional tensor")
    return int(tensor.shape[0])


def _first_tensor(batch: Any) -> torch.Tensor | None:
    if isinstance(batch, torch.Tensor):
        return batch
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (tuple, list)) else ()
    for value in values:
        found = _first_tensor(value)
        if found is not None:
            return found
    return None


def describe_batch(batch: Any) -> str:
    """What a batch is, for error messages: ``a dict with keys [...]``, ``a tuple of 3: (Tensor, ...)``."""
    if isinstance(batch, Mapping):
        return f"a {type(batch).__name__} with keys {list(batch)}"
    if isinstance(batch, (tuple, list)):
        return f"a {type(batch).__name__} of {len(batch)}: ({', '.join(type(v).__name__ for v in batch)})"
    return f"a {type(batch).__name__}"


class Batches:
    """Shuffled mini-batches of ``data``. Tensor datasets live on the device and are sliced directly (no
    per-sample collation); a batch size of at least the dataset's size is full-batch training. Other
    datasets go through a ``DataLoader`` with the default collate, each batch moved to the device."""

    def __init__(self, data: Dataset, batch_size: int, device: torch.device, *, seed: int, shuffle: bool = True) -> None:
        self.batch_size = batch_size
        self.device = device
        self.n = len(data)
        self.shuffle = shuffle and batch_size < self.n
        self.generator = torch.Generator().manual_seed(seed)
        if isinstance(data, TensorDataset) and len(data.tensors) == 2:
            self.tensors = tuple(t.to(device) for t in data.tensors)
            self.loader = None
        else:
            self.tensors = None
            self.loader = DataLoader(data, batch_size=batch_size, shuffle=self.shuffle, generator=self.generator)

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[Any]:
        if self.loader is not None:
            for batch in self.loader:
                yield move_to_device(batch, self.device, non_blocking=True)
            return
        x, y = self.tensors
        if not self.shuffle:
            for start in range(0, self.n, self.batch_size):
                yield x[start : start + self.batch_size], y[start : start + self.batch_size]
            return
        order = torch.randperm(self.n, generator=self.generator).to(self.device)
        for start in range(0, self.n, self.batch_size):
            idx = order[start : start + self.batch_size]
            yield x[idx], y[idx]


class UnsizedData(TypeError):
    """Training data without a length (an iterable dataset, a generator) and no ``steps_per_epoch``:
    an epoch has no end to count steps to."""


class LoaderBatches:
    """A user's own ``DataLoader`` (or any iterable of batches, an iterable dataset's loader included)
    used as it is, each batch moved to ``device``.

    An epoch is one pass over ``data``, or ``steps_per_epoch`` batches when given: then the same
    iterator goes on from one epoch to the next (an endless iterable dataset never restarts) and is
    started again only when it runs out. ``steps_per_epoch`` is needed when ``data`` has no length.
    """

    def __init__(self, data: Iterable[Any], device: torch.device | str, *, steps_per_epoch: int | None = None) -> None:
        if steps_per_epoch is not None and not (isinstance(steps_per_epoch, int) and steps_per_epoch >= 1):
            raise ValueError(f"steps_per_epoch: expected an integer >= 1 or None, got {steps_per_epoch!r}")
        if steps_per_epoch is None and not _has_len(data):
            raise UnsizedData(f"data: {type(data).__name__} has no length; pass steps_per_epoch (batches per epoch)")
        self.data = data
        self.device = torch.device(device)
        self.steps_per_epoch = steps_per_epoch
        self._iterator: Iterator[Any] | None = None

    def __len__(self) -> int:
        return self.steps_per_epoch if self.steps_per_epoch is not None else len(self.data)

    def __iter__(self) -> Iterator[Any]:
        # a pinned host batch crosses to the GPU without blocking the host; elsewhere this is a plain copy
        non_blocking = self.device.type == "cuda"
        if self.steps_per_epoch is None:
            for batch in self.data:
                yield move_to_device(batch, self.device, non_blocking=non_blocking)
            return
        for _ in range(self.steps_per_epoch):
            batch = self._next()
            if batch is _EXHAUSTED:
                return
            yield move_to_device(batch, self.device, non_blocking=non_blocking)

    def _next(self) -> Any:
        for restarted in (False, True):
            if self._iterator is None:
                self._iterator = iter(self.data)
            try:
                return next(self._iterator)
            except StopIteration:
                self._iterator = None
                if restarted:  # a fresh pass yields nothing: the data is empty (or a one-shot iterator)
                    return _EXHAUSTED
        return _EXHAUSTED


_EXHAUSTED = object()


def _has_len(data: object) -> bool:
    try:
        len(data)  # a DataLoader over an iterable dataset has __len__ but raises TypeError
    except TypeError:
        return False
    return True
