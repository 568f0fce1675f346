"""The trainer's flat gradient buffer: same training, one-op global norm, safe fallback."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autolr.grads import FlatGradients


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def _train(model: nn.Module, *, flat: bool, steps: int = 20) -> list[float]:
    params = list(model.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-2)
    grads = FlatGradients(params)
    if not flat:
        grads._adopt = lambda: None  # keep PyTorch's own gradient tensors
    gen = torch.Generator().manual_seed(1)
    norms = []
    for _ in range(steps):
        x, y = torch.randn(32, 8, generator=gen), torch.randint(0, 3, (32,), generator=gen)
        grads.zero(optimizer)
        nn.functional.cross_entropy(model(x), y).backward()
        norms.append(float(grads.total_norm()))
        optimizer.step()
    return norms


def test_flat_buffer_trains_exactly_like_pytorch_gradients() -> None:
    a, b = _model(), _model()
    norms_flat, norms_plain = _train(a, flat=True), _train(b, flat=False)
    assert norms_flat == pytest.approx(norms_plain, rel=1e-6)  # one reduction vs a norm of norms: rounding only
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_global_norm_is_the_norm_of_all_gradients_and_grads_are_views() -> None:
    model = _model()
    params = list(model.parameters())
    grads = FlatGradients(params)
    nn.functional.cross_entropy(model(torch.randn(4, 8)), torch.tensor([0, 1, 2, 0])).backward()
    total = grads.total_norm()
    expected = torch.linalg.vector_norm(torch.cat([p.grad.reshape(-1) for p in params]))
    assert torch.allclose(total, expected)
    assert grads.flat is not None
    assert all(p.grad.untyped_storage().data_ptr() == grads.flat.untyped_storage().data_ptr() for p in params)


def test_a_parameter_without_gradient_keeps_pytorch_gradients() -> None:
    model = _model()
    unused = nn.Parameter(torch.ones(3))
    params = [*model.parameters(), unused]
    grads = FlatGradients(params)
    nn.functional.cross_entropy(model(torch.randn(4, 8)), torch.tensor([0, 1, 2, 0])).backward()
    total = grads.total_norm()
    assert grads.flat is None and unused.grad is None
    assert torch.allclose(total, torch.linalg.vector_norm(torch.cat([p.grad.reshape(-1) for p in params[:-1]])))
