"""Gradient norms, cheaply: per parameter in one fused call, or all at once through a flat buffer."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["FlatGradients", "grad_norms"]


def grad_norms(parameters: Sequence[torch.nn.Parameter]) -> list[torch.Tensor]:
    """Per-parameter gradient norms in one fused call; the global norm is the norm of these."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return []
    return list(torch._foreach_norm(grads))


class FlatGradients:
    """The gradients of ``params`` as views into one flat buffer (as DDP's ``gradient_as_bucket_view``).

    Why: the global gradient norm, checked every step, then costs one op instead of one per parameter
    plus a stack, zeroing is one op, and no gradient tensors are allocated per step; on the digits MLP
    the loop with the norm is then no slower than a plain loop without it (bench/tracking_overhead.py).
    The buffer is adopted after the first backward pass, and only when every parameter got a dense,
    contiguous gradient of one dtype on one device; otherwise gradients stay as PyTorch makes them.
    Once adopted, a parameter that gets no gradient in some step has a zero gradient, not None (as
    under DDP).
    """

    def __init__(self, params: Sequence[torch.nn.Parameter]) -> None:
        self.params = list(params)
        self.flat: torch.Tensor | None = None
        self._checked = False

    def zero(self, optimizer: torch.optim.Optimizer) -> None:
        if self.flat is not None:
            self.flat.zero_()
        else:
            optimizer.zero_grad(set_to_none=True)

    def total_norm(self) -> torch.Tensor:
        """The global gradient norm; call after ``backward()``."""
        if not self._checked:
            self._checked = True
            self._adopt()
        if self.flat is not None:
            return torch.linalg.vector_norm(self.flat)
        norms = grad_norms(self.params)
        return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())

    def _adopt(self) -> None:
        grads = [p.grad for p in self.params]
        if not grads or any(g is None or g.layout != torch.strided or not g.is_contiguous() for g in grads):
            return
        if len({(g.dtype, g.device) for g in grads}) != 1:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        offset = 0
        for p in self.params:
            p.grad = flat[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
        self.flat = flat
