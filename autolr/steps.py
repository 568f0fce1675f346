"""What happens to each optimisation step's numbers, for autolr's trainer and a user's own loop alike.

:class:`StepRecorder` takes a step's loss, rate and gradient norm as they are (tensors stay on the
device), brings a window of ``check_every`` steps to the host in one transfer (the one sync point, so
a CUDA loop never waits on the GPU step by step), lets the :class:`~autolr.guard.DivergenceGuard` judge
it and hands it to the watchers. Every ``layer_stats_every`` steps it also measures each layer's
gradient norm, weight norm and update-to-weight ratio. Imports torch only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import torch

from autolr import keys
from autolr.grads import grad_norms
from autolr.guard import DivergenceGuard

__all__ = ["StepRecorder", "StepWatcher"]


class StepWatcher(Protocol):
    def on_steps(self, first_step: int, values: Mapping[str, Sequence[float]]) -> None: ...

    def on_layer_stats(self, step: int, stats: Mapping[str, float]) -> None: ...


class StepRecorder:
    """Per-step values of one run: buffered, judged, handed on.

    Args:
        params, names: the trainable parameters and their names (for per-layer statistics).
        guard: judges each window; a divergent step raises :class:`~autolr.guard.Diverged` from
            :meth:`record` or :meth:`flush`, after the watchers saw the curve up to that step.
        watchers: receive ``on_steps`` and ``on_layer_stats``.
        check_every: steps per host transfer.
        layer_stats_every: per-layer statistics every N steps (0: never).
        ignore_nonfinite_grad_norm: a gradient scaler (fp16) skips steps whose gradients overflowed,
            so an infinite norm there is not divergence; the loss still is.
        recorded_after_update: :meth:`record` is called after ``optimizer.step()`` (autolr's trainer);
            False when it is called before it (``trial.step(loss)`` in a user's loop), so that a
            layer-stats step's update is measured at the next step instead.
    """

    def __init__(
        self,
        params: Sequence[torch.nn.Parameter],
        names: Sequence[str],
        *,
        guard: DivergenceGuard | None,
        watchers: Sequence[StepWatcher],
        check_every: int,
        layer_stats_every: int = 0,
        ignore_nonfinite_grad_norm: bool = False,
        recorded_after_update: bool = True,
    ) -> None:
        self.params, self.names = list(params), list(names)
        self.guard, self.watchers = guard, list(watchers)
        self.check_every, self.layer_stats_every = check_every, layer_stats_every
        self.ignore_nonfinite_grad_norm = ignore_nonfinite_grad_norm
        self.recorded_after_update = recorded_after_update
        self.step = 0  # steps recorded so far
        self._window: list[tuple[torch.Tensor, float, torch.Tensor]] = []
        self._snapshot: tuple[int, list[torch.Tensor], list[torch.Tensor]] | None = None

    def before_update(self) -> None:
        """Call after ``backward()``, before ``optimizer.step()``: a layer-stats step takes its
        gradient norms and a copy of the weights here (the update is measured once the weights moved)."""
        self._emit_earlier_snapshot()
        if self.layer_stats_every and self.step % self.layer_stats_every == 0:
            self._snapshot = (self.step, grad_norms(self.params), [p.detach().clone() for p in self.params])

    def record(self, loss: torch.Tensor, lr: float, grad_norm: torch.Tensor) -> None:
        """One step's values (after ``optimizer.step()`` unless ``recorded_after_update`` is False);
        ``loss`` and ``grad_norm`` detached (this runs every step: no op is spent here)."""
        self._emit_earlier_snapshot(including_this_step=self.recorded_after_update)
        self._window.append((loss, lr, grad_norm))  # detached 0-d tensors, as the caller hands them
        self.step += 1
        if len(self._window) >= self.check_every:
            self._flush_window()

    def flush(self) -> None:
        """Everything buffered, at an epoch end or the end of a run (the weights have moved by then)."""
        self._emit_earlier_snapshot()
        self._flush_window()

    def _flush_window(self) -> None:
        """One host transfer for the buffered window, then the guard, then the watchers."""
        window, self._window = self._window, []
        if not window:
            return
        n, first_step = len(window), self.step - len(window)
        tensors = [w[0] for w in window] + [w[2] for w in window]
        if any(t.dtype != tensors[0].dtype for t in tensors):  # a bf16 loss beside fp32 norms (a loop's own)
            tensors = [t.float() for t in tensors]
        host = torch.stack(tensors).float().tolist()  # the sync point
        values = {"train_loss": host[:n], "lr": [w[1] for w in window], "grad_norm": host[n:]}
        diverged = self._judge(first_step, values)
        if diverged is not None:
            cut = diverged.step - first_step + 1  # the watchers see the curve up to the divergent step
            values = {k: v[:cut] for k, v in values.items()}
        for watcher in self.watchers:
            watcher.on_steps(first_step, values)
        if diverged is not None:
            raise diverged

    def _emit_earlier_snapshot(self, *, including_this_step: bool = False) -> None:
        if self._snapshot is not None and (including_this_step or self._snapshot[0] < self.step):
            snapshot, self._snapshot = self._snapshot, None
            self._emit_layer_stats(*snapshot)

    def _judge(self, first_step: int, values: Mapping[str, list[float]]):
        if self.guard is None:
            return None
        norms = values["grad_norm"]
        if self.ignore_nonfinite_grad_norm:
            norms = [v if v == v and abs(v) != float("inf") else 0.0 for v in norms]
        return self.guard.check(first_step, values["train_loss"], norms)

    def _emit_layer_stats(self, step: int, norms: list[torch.Tensor], before: list[torch.Tensor]) -> None:
        with torch.no_grad():
            weights = [p.detach() for p in self.params]
            weight = torch.stack(torch._foreach_norm(weights))
            update = torch.stack(torch._foreach_norm(torch._foreach_sub(weights, before)))
            grad = torch.stack(norms) if len(norms) == len(weights) else torch.zeros_like(weight)
            rows = torch.stack([grad, weight, update / weight.clamp_min(1e-12)]).tolist()
        stats = {}
        for i, name in enumerate(self.names):
            stats[keys.LAYER_GRAD_NORM + name] = rows[0][i]
            stats[keys.LAYER_WEIGHT_NORM + name] = rows[1][i]
            stats[keys.LAYER_UPDATE_RATIO + name] = rows[2][i]
        for watcher in self.watchers:
            watcher.on_layer_stats(step, stats)
