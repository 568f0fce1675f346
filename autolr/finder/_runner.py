"""The range test's runner: trains a model from its starting state at given rates, on the same batches
each time, and puts that state back. Imports torch only.

What it steps on comes from outside: ``step(model, batch) -> scalar loss`` and a batch source with
``full_batch``, ``batch_size`` and ``endless(device)`` (:mod:`autolr.finder._data`), so the built-in
tensor tasks and a user's own model with any batch structure run through the same loop.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from autolr.batches import batch_size
from autolr.grads import grad_norms

__all__ = ["BatchSource", "Runner", "Step", "same_randomness"]

Step = Callable[[torch.nn.Module, Any], torch.Tensor]


class BatchSource(Protocol):
    full_batch: bool  # the same batch every step
    batch_size: int  # samples in a batch

    def endless(self, device: torch.device) -> Iterator[Any]:
        """The same batches, in the same order, on ``device``, each time it is called."""


@contextlib.contextmanager
def same_randomness(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Seeds torch, numpy and Python's ``random`` with ``seed`` and puts the caller's states back after."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[device] if device is not None and device.type == "cuda" else []):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed)
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


class Runner:
    """Trains ``model`` from its starting state at given rates; :meth:`restore` puts that state back."""

    def __init__(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: Step, batches: BatchSource, *, grad_clip: float | None, seed: int
    ) -> None:
        self.model, self.optimizer, self.training_step, self.batches = model, optimizer, step, batches
        self.grad_clip, self.seed = grad_clip, seed
        self.full_batch = batches.full_batch
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("model: expected trainable parameters, got none (all frozen?)")
        self.device = self.params[0].device
        base = optimizer.param_groups[0]["lr"]
        # param groups keep their ratios to the first group's rate (discriminative rates stay so)
        self.ratios = [group["lr"] / base if base > 0 else 1.0 for group in optimizer.param_groups]
        self.model_state = copy.deepcopy(model.state_dict())
        self.optimizer_state = copy.deepcopy(optimizer.state_dict())
        self.was_training = model.training
        self.steps = 0
        self.samples = 0
        self.forward_samples = 0

    def restore(self) -> None:
        self.model.load_state_dict(self.model_state)
        # a copy each time: torch adopts some state tensors as given (Adam's ``step``) and then updates
        # them in place, which would change the saved state itself
        self.optimizer.load_state_dict(copy.deepcopy(self.optimizer_state))
        self.model.train(self.was_training)

    def _same_randomness(self) -> contextlib.AbstractContextManager[None]:
        """Every pass draws the same random numbers (dropout masks, augmentations) step for step, so that
        a probe's first loss is its reference's exactly and later ones differ by the rate alone; the
        caller's random state is put back afterwards."""
        return same_randomness(self.seed, self.device)

    @torch.no_grad()
    def starting_losses(self, n_batches: int) -> list[float]:
        """The loss at the starting weights on each of the first ``n_batches`` batches, forward only."""
        self.restore()
        self.model.train()  # as in a step: batch statistics, dropout
        batches = self.batches.endless(self.device)
        losses = []
        with self._same_randomness():
            for _ in range(1 if self.full_batch else n_batches):  # full batch: one pass will do
                batch = next(batches)
                losses.append(_scalar(self.training_step(self.model, batch)))
                self.forward_samples += batch_size(batch)
        self.restore()  # the forward passes moved BatchNorm's running statistics
        values = torch.stack(losses).float().tolist()
        return values * n_batches if self.full_batch else values

    def run(self, lrs: Sequence[float], stop: Callable[[list[float]], bool], *, check_every: int) -> tuple[list[float], list[float]]:
        """Loss and gradient norm of one step at each rate, from the starting state, until ``stop(losses)``
        or a non-finite value, looked at every ``check_every`` steps."""
        self.restore()
        self.model.train()
        batches = self.batches.endless(self.device)
        losses: list[float] = []
        norms: list[float] = []
        with self._same_randomness():
            for first in range(0, len(lrs), check_every):
                window = [self._step(lr, next(batches)) for lr in lrs[first : first + check_every]]
                host = torch.stack([torch.stack(values) for values in window]).float().tolist()  # one sync per window
                losses += [h[0] for h in host]
                norms += [h[1] for h in host]
                if not all(math.isfinite(v) for h in host for v in h) or stop(losses):
                    break
        return losses, norms

    def _step(self, lr: float, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        for group, ratio in zip(self.optimizer.param_groups, self.ratios):
            group["lr"] = lr * ratio
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.training_step(self.model, batch)
        loss.backward()
        norms = grad_norms(self.params)
        total = torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros((), device=self.device)
        if self.grad_clip is not None:
            torch.nn.utils.clip_grads_with_norm_(self.params, self.grad_clip, total)
        self.optimizer.step()
        self.steps += 1
        self.samples += batch_size(batch)
        return loss.detach().reshape(()), total.detach()


def _scalar(loss: object) -> torch.Tensor:
    if not (isinstance(loss, torch.Tensor) and loss.numel() == 1):
        got = f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else f"a {type(loss).__name__}"
        raise TypeError(f"training_step: expected a scalar loss tensor, got {got}")
    return loss.detach().reshape(())
