"""Optimizers: a registry of torch optimizers with their declared hyperparameters.

Reading the registry imports no torch (a study file's ``search.optimizer`` is checked against it by
``autolr show`` and ``export`` too, which train nothing); building an optimizer does.

Names in a study file's ``search.optimizer`` and in an export's ``params`` are the keys of
:data:`OPTIMIZERS`; hyperparameters are flat (``beta1``/``beta2`` rather than a ``betas`` tuple) so
that they can be searched and compared one by one.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from autolr.params import LR, ParamSpec, resolve

if TYPE_CHECKING:
    import torch

__all__ = ["OPTIMIZERS", "OptimizerSpec", "build_optimizer", "optimizer_mode"]


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer a study can search: how to build it, its declared hyperparameters, the package it
    needs beyond torch (an optional extra), and, for an optimizer whose ``lr`` is not a step size, the
    range a study searches for it whatever ``search.lr`` says."""

    name: str
    build: Callable[..., torch.optim.Optimizer]
    params: tuple[ParamSpec, ...]
    package: str | None = None
    lr_range: tuple[float, float] | None = None

    def param(self, name: str) -> ParamSpec:
        return next(p for p in self.params if p.name == name)


def _weight_decay(default: float = 0.0) -> ParamSpec:
    return ParamSpec("weight_decay", default, float, 0.0, 10.0, doc="L2 penalty (decoupled for adamw)")


def _beta(name: str, default: float) -> ParamSpec:
    return ParamSpec(name, default, float, 0.0, 0.99999)


def _eps() -> ParamSpec:
    return ParamSpec("eps", 1e-8, float, 0.0, 1.0)


def _sgd(params, lr, *, momentum, nesterov, weight_decay):
    import torch

    # Nesterov needs momentum; a searched momentum of 0 falls back to plain SGD instead of failing.
    nesterov = bool(nesterov) and momentum > 0
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)


def _adam(params, lr, *, beta1, beta2, eps, weight_decay):
    import torch

    return torch.optim.Adam(params, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay)


def _adamw(params, lr, *, beta1, beta2, eps, weight_decay):
    import torch

    return torch.optim.AdamW(params, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay)


def _rmsprop(params, lr, *, alpha, momentum, eps, weight_decay):
    import torch

    return torch.optim.RMSprop(params, lr=lr, alpha=alpha, momentum=momentum, eps=eps, weight_decay=weight_decay)


def _schedulefree_adamw(params, lr, *, beta1, beta2, eps, weight_decay):
    # Schedule-free AdamW (Defazio et al. 2024): no decay schedule needed, it averages its iterates
    # itself; it evaluates at other weights than it trains at, so the trainer switches it with
    # optimizer.eval()/train() around validation (a user's own loop does the same).
    import schedulefree

    optimizer = schedulefree.AdamWScheduleFree(params, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay)
    optimizer.train()  # it refuses to step in eval mode: built ready to train (load_best, the range test, loops)
    return optimizer


def _prodigy(params, lr, *, beta1, beta2, weight_decay, d_coef):
    # Prodigy (Mishchenko & Defazio 2023) estimates the step size itself; its lr multiplies that
    # estimate (1 is its own recommendation), so a study searches it around 1 (lr_range).
    import prodigyopt

    return prodigyopt.Prodigy(params, lr=lr, betas=(beta1, beta2), weight_decay=weight_decay, d_coef=d_coef)


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
        OptimizerSpec(
            "schedulefree_adamw",
            _schedulefree_adamw,
            (_beta("beta1", 0.9), _beta("beta2", 0.999), _eps(), _weight_decay()),
            package="schedulefree",
        ),
        OptimizerSpec(
            "prodigy",
            _prodigy,
            (_beta("beta1", 0.9), _beta("beta2", 0.999), _weight_decay(), ParamSpec("d_coef", 1.0, float, 1e-3, 1e3, doc="scales the estimated step size")),
            package="prodigyopt",
            lr_range=(0.1, 10.0),
        ),
    ]
}


def build_optimizer(name: str, parameters: Iterable[torch.nn.Parameter], lr: float, params: Mapping[str, Any] | None = None) -> torch.optim.Optimizer:
    """Build optimizer ``name`` at peak rate ``lr``; hyperparameters not in ``params`` take their defaults."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {sorted(OPTIMIZERS)}")
    LR.check(lr, owner=f"optimizer {name!r}")
    spec = OPTIMIZERS[name]
    kwargs = resolve(spec.params, params, owner=f"optimizer {name!r}")
    if spec.package is not None and importlib.util.find_spec(spec.package) is None:
        raise ImportError(f"optimizer {name!r} needs the package {spec.package!r}: pip install 'autolr[lrfree]'")
    return spec.build(parameters, lr, **kwargs)


def optimizer_mode(optimizer: torch.optim.Optimizer, mode: str) -> None:
    """``optimizer.train()`` / ``.eval()`` for an optimizer that has them (schedule-free: it evaluates
    at other weights than it trains at); others have none, and this does nothing."""
    if callable(getattr(optimizer, "train", None)) and callable(getattr(optimizer, "eval", None)):
        getattr(optimizer, mode)()
