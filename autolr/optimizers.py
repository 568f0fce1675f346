"""Optimizers: a registry of torch optimizers with their declared hyperparameters.

Names in a study file's ``search.optimizer`` and in an export's ``params`` are the keys of
:data:`OPTIMIZERS`; hyperparameters are flat (``beta1``/``beta2`` rather than a ``betas`` tuple) so
that they can be searched and compared one by one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from autolr.params import LR, ParamSpec, resolve

__all__ = ["OPTIMIZERS", "OptimizerSpec", "build_optimizer"]


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    name: str
    build: Callable[..., torch.optim.Optimizer]
    params: tuple[ParamSpec, ...]

    def param(self, name: str) -> ParamSpec:
        return next(p for p in self.params if p.name == name)


def _weight_decay(default: float = 0.0) -> ParamSpec:
    return ParamSpec("weight_decay", default, float, 0.0, 10.0, doc="L2 penalty (decoupled for adamw)")


def _beta(name: str, default: float) -> ParamSpec:
    return ParamSpec(name, default, float, 0.0, 0.99999)


def _eps() -> ParamSpec:
    return ParamSpec("eps", 1e-8, float, 0.0, 1.0)


def _sgd(params, lr, *, momentum, nesterov, weight_decay):
    # Nesterov needs momentum; a searched momentum of 0 falls back to plain SGD instead of failing.
    nesterov = bool(nesterov) and momentum > 0
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)


def _adam(params, lr, *, beta1, beta2, eps, weight_decay):
    return torch.optim.Adam(params, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay)


def _adamw(params, lr, *, beta1, beta2, eps, weight_decay):
    return torch.optim.AdamW(params, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay)


def _rmsprop(params, lr, *, alpha, momentum, eps, weight_decay):
    return torch.optim.RMSprop(params, lr=lr, alpha=alpha, momentum=momentum, eps=eps, weight_decay=weight_decay)


OPTIMIZERS: Mapping[str, OptimizerSpec] = {
    s.name: s
    for s in [
        OptimizerSpec(
            "sgd",
            _sgd,
            (ParamSpec("momentum", 0.9, float, 0.0, 0.9999), ParamSpec("nesterov", False, bool), _weight_decay()),
        ),
        OptimizerSpec("adam", _adam, (_beta("beta1", 0.9), _beta("beta2", 0.999), _eps(), _weight_decay())),
        OptimizerSpec("adamw", _adamw, (_beta("beta1", 0.9), _beta("beta2", 0.999), _eps(), _weight_decay(0.01))),
        OptimizerSpec(
            "rmsprop",
            _rmsprop,
            (_beta("alpha", 0.99), ParamSpec("momentum", 0.0, float, 0.0, 0.9999), _eps(), _weight_decay()),
        ),
    ]
}


def build_optimizer(name: str, parameters: Iterable[torch.nn.Parameter], lr: float, params: Mapping[str, Any] | None = None) -> torch.optim.Optimizer:
    """Build optimizer ``name`` at peak rate ``lr``; hyperparameters not in ``params`` take their defaults."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {sorted(OPTIMIZERS)}")
    LR.check(lr, owner=f"optimizer {name!r}")
    kwargs = resolve(OPTIMIZERS[name].params, params, owner=f"optimizer {name!r}")
    return OPTIMIZERS[name].build(parameters, lr, **kwargs)
