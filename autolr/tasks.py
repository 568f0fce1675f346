"""Tasks: what is trained. A task factory returns an :class:`autolr.Task`.

Built-in tasks use scikit-learn's bundled data only (nothing is downloaded): features standardised on
the training split, a fixed stratified train/validation split, seeded. A user task is named
``"package.module:factory"`` and called as ``factory(**task_args)`` after seeding.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import inspect
import os
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

__all__ = ["BUILTIN_TASKS", "Task", "TrainingStep", "ValidationStep", "build_task", "resolve_factory", "seed_everything"]


TrainingStep = Callable[[nn.Module, Any], Any]
ValidationStep = Callable[[nn.Module, Any], Mapping[str, Any]]


@dataclasses.dataclass
class Task:
    """A model and its data, and how a batch becomes a loss.

    The simple form: ``train_data``/``val_data`` are ``Dataset``s of ``(inputs..., target)`` and
    ``loss_fn(outputs, targets)`` returns a scalar tensor; ``metrics`` maps names to ``fn(outputs,
    targets) -> float``, computed on the validation set each epoch.

    Any other model (its own batches, its own loss):

    - ``train_data``/``val_data`` may be the user's own ``DataLoader`` (its collate, workers and batch
      size used as they are) or any iterable of batches (an iterable dataset: set
      ``train.steps_per_epoch``); batches may be tuples, lists, dicts or nested, moved to the device
      recursively;
    - ``training_step(model, batch)`` returns the loss: a scalar tensor, or anything with a ``loss``
      (a Hugging Face ``ModelOutput``, a dict with ``"loss"``);
    - ``validation_step(model, batch)`` returns ``{"loss": ..., name: ...}`` for one batch; the values
      are averaged over the validation set weighted by batch size (never all outputs at once) and
      logged as ``val_loss``, ``val_<name>``. Without it, ``training_step`` (or ``loss_fn``) gives
      ``val_loss``.

    ``loss_fn`` is then optional.
    """

    model: nn.Module
    train_data: Any
    val_data: Any
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None
    metrics: Mapping[str, Callable[[Any, Any], float]] = dataclasses.field(default_factory=dict)
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # facts a benchmark may check against
    training_step: TrainingStep | None = None
    validation_step: ValidationStep | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, nn.Module):
            raise TypeError(f"Task.model: expected a torch.nn.Module, got {type(self.model).__name__}")
        for name in ("train_data", "val_data"):
            data = getattr(self, name)
            if not (isinstance(data, (Dataset, DataLoader)) or hasattr(data, "__iter__") or hasattr(data, "__getitem__")):
                raise TypeError(f"Task.{name}: expected a Dataset, a DataLoader or an iterable of batches, got {type(data).__name__}")
        for name in ("loss_fn", "training_step", "validation_step"):
            if getattr(self, name) is not None and not callable(getattr(self, name)):
                raise TypeError(f"Task.{name}: expected a callable, got {type(getattr(self, name)).__name__}")
        if self.loss_fn is None and self.training_step is None:
            raise TypeError("Task: expected loss_fn(outputs, targets) or training_step(model, batch) -> loss, got neither")
        if self.metrics and self.loss_fn is None:
            raise TypeError("Task.metrics: fn(outputs, targets) needs loss_fn's form; return metrics from validation_step instead")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    return (outputs.argmax(dim=1) == targets).float().mean().item()


def _split(x: np.ndarray, y: np.ndarray, *, val_fraction: float, seed: int, classify: bool):
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    x_tr, x_va, y_tr, y_va = train_test_split(x, y, test_size=val_fraction, random_state=seed, stratify=y if classify else None)
    scaler = StandardScaler().fit(x_tr)
    x_tr, x_va = scaler.transform(x_tr), scaler.transform(x_va)
    if classify:
        to_y = lambda a: torch.as_tensor(a, dtype=torch.long)  # noqa: E731
    else:
        y_scale = float(np.std(y_tr)) or 1.0  # standardised target: losses comparable across tasks
        y_mean = float(np.mean(y_tr))
        to_y = lambda a: torch.as_tensor((a - y_mean) / y_scale, dtype=torch.float32).reshape(-1, 1)  # noqa: E731
    to_x = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    return TensorDataset(to_x(x_tr), to_y(y_tr)), TensorDataset(to_x(x_va), to_y(y_va))


@functools.lru_cache(maxsize=8)
def _bundled_split(name: str, *, val_fraction: float, seed: int, classify: bool) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...], int]:
    """scikit-learn's bundled dataset ``load_<name>``, split and standardised: once per process (every
    trial builds its task afresh), and kept on disk (:func:`_split_cache`) so that a later invocation
    need not import scikit-learn (about 2 s: it pulls in SciPy) to split the same data the same way.
    Returns the tensors, which the tasks wrap in datasets of their own, and the feature count."""
    path = _split_cache(name, val_fraction=val_fraction, seed=seed, classify=classify)
    if path is not None and path.exists():
        try:
            kept = torch.load(path, weights_only=True)
            return tuple(kept["train"]), tuple(kept["val"]), int(kept["n_features"])
        except Exception:  # noqa: BLE001 - a damaged cache file is made again below
            pass
    import sklearn.datasets

    x, y = getattr(sklearn.datasets, f"load_{name}")(return_X_y=True)
    train, val = _split(x, y, val_fraction=val_fraction, seed=seed, classify=classify)
    if path is not None:
        with contextlib.suppress(OSError):  # a read-only home: split again next time
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            torch.save({"train": list(train.tensors), "val": list(val.tensors), "n_features": x.shape[1]}, tmp)
            os.replace(tmp, path)  # whole or not at all, for processes that read it meanwhile
    return train.tensors, val.tensors, x.shape[1]


def _split_cache(name: str, *, val_fraction: float, seed: int, classify: bool) -> Path | None:
    """``$AUTOLR_CACHE_DIR`` (default ``~/.cache/autolr``)``/datasets/<name>-...-sklearn<version>.pt``:
    the version is in the name because another scikit-learn may split or scale differently."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        sklearn_version = version("scikit-learn")
    except PackageNotFoundError:
        return None
    root = Path(os.environ.get("AUTOLR_CACHE_DIR") or Path.home() / ".cache" / "autolr")
    return root / "datasets" / f"{name}-val{val_fraction}-seed{seed}-{'classes' if classify else 'target'}-sklearn{sklearn_version}.pt"


def _bundled(name: str, *, val_fraction: float, seed: int, classify: bool) -> tuple[TensorDataset, TensorDataset, int]:
    train, val, n_features = _bundled_split(name, val_fraction=val_fraction, seed=seed, classify=classify)
    return TensorDataset(*train), TensorDataset(*val), n_features


def _mlp(n_in: int, n_out: int, hidden: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = n_in
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


def _classification(name: str, *, hidden: int, depth: int, val_fraction: float, split_seed: int) -> Task:
    train, val, n_features = _bundled(name, val_fraction=val_fraction, seed=split_seed, classify=True)
    return _classifier(train, val, n_features, hidden=hidden, depth=depth)


def _classifier(train: TensorDataset, val: TensorDataset, n_features: int, *, hidden: int, depth: int) -> Task:
    """An MLP over ``n_features`` with one output per class the training labels hold, cross-entropy."""
    model = _mlp(n_features, int(train.tensors[1].max()) + 1, hidden, depth)
    return Task(model, train, val, nn.functional.cross_entropy, {"accuracy": accuracy})


def digits_mlp(*, hidden: int = 128, depth: int = 1, val_fraction: float = 0.25, split_seed: int = 0) -> Task:
    """8x8 handwritten digits (1797 samples, 10 classes), an MLP."""
    return _classification("digits", hidden=hidden, depth=depth, val_fraction=val_fraction, split_seed=split_seed)


def digits_cnn(*, channels: int = 16, val_fraction: float = 0.25, split_seed: int = 0) -> Task:
    """8x8 handwritten digits as 1x8x8 images, a small CNN with BatchNorm."""
    train, val, _ = _bundled("digits", val_fraction=val_fraction, seed=split_seed, classify=True)
    for data in (train, val):
        data.tensors = (data.tensors[0].reshape(-1, 1, 8, 8), data.tensors[1])
    c = channels
    model = nn.Sequential(
        nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
        nn.Conv2d(c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * c * 16, 10),
    )  # fmt: skip
    return Task(model, train, val, nn.functional.cross_entropy, {"accuracy": accuracy})


def wine_mlp(*, hidden: int = 32, depth: int = 1, val_fraction: float = 0.3, split_seed: int = 0) -> Task:
    """Wine recognition (178 samples, 3 classes), an MLP."""
    return _classification("wine", hidden=hidden, depth=depth, val_fraction=val_fraction, split_seed=split_seed)


def breast_cancer_mlp(*, hidden: int = 32, depth: int = 1, val_fraction: float = 0.25, split_seed: int = 0) -> Task:
    """Breast cancer Wisconsin (569 samples, 2 classes), an MLP."""
    return _classification("breast_cancer", hidden=hidden, depth=depth, val_fraction=val_fraction, split_seed=split_seed)


def diabetes_mlp(*, hidden: int = 32, depth: int = 1, val_fraction: float = 0.25, split_seed: int = 0) -> Task:
    """Diabetes progression (442 samples), regression with MSE on a standardised target."""
    train, val, n_features = _bundled("diabetes", val_fraction=val_fraction, seed=split_seed, classify=False)
    return Task(_mlp(n_features, 1, hidden, depth), train, val, nn.functional.mse_loss)


def classification_mlp(
    *,
    n_samples: int = 2000,
    n_features: int = 20,
    n_informative: int = 10,
    n_classes: int = 2,
    hidden: int = 64,
    depth: int = 1,
    val_fraction: float = 0.25,
    split_seed: int = 0,
) -> Task:
    """Synthetic ``sklearn.datasets.make_classification`` data of the size given, an MLP."""
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=n_samples,
        n_features=n_features,
        n_informative=n_informative,
        n_classes=n_classes,
        random_state=split_seed,
    )
    train, val = _split(x, y, val_fraction=val_fraction, seed=split_seed, classify=True)
    return _classifier(train, val, x.shape[1], hidden=hidden, depth=depth)


def least_squares(
    *,
    n_samples: int = 256,
    n_features: int = 20,
    max_eig: float = 1.0,
    condition: float = 100.0,
    noise: float = 0.3,
    split_seed: int = 0,
    spectrum: str = "log",
) -> Task:
    """Linear least squares with a chosen Hessian spectrum: the curvature is known exactly.

    The loss is ``mean((X w - y)**2)``, whose Hessian ``2/n X^T X`` has eigenvalues from
    ``max_eig / condition`` to ``max_eig``: spread log-uniformly (``spectrum="log"``), or
    ``"clustered"``: a tenth of them (at least one) within a factor 2 below ``max_eig`` and the rest
    within a factor 2 above the bottom, so a few stiff directions set the limit while most of the loss
    sits in slow ones. Full-batch gradient descent is stable exactly below ``2 / max_eig``. Validation
    is on the training data (the question is how well the optimisation goes), and ``task.info`` holds
    ``max_eig`` and ``optimum``, the exact minimum of the loss.
    """
    rng = np.random.default_rng(split_seed)
    eigs = _spectrum(spectrum, max_eig, condition, n_features)
    u, _ = np.linalg.qr(rng.standard_normal((n_samples, n_features)))
    v, _ = np.linalg.qr(rng.standard_normal((n_features, n_features)))
    x = (u * np.sqrt(eigs * n_samples / 2.0)) @ v.T
    y = x @ rng.standard_normal(n_features) + noise * rng.standard_normal(n_samples)
    w_opt, *_ = np.linalg.lstsq(x, y, rcond=None)
    optimum = float(np.mean((x @ w_opt - y) ** 2))
    data = TensorDataset(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32).reshape(-1, 1))
    model = nn.Linear(n_features, 1, bias=False)
    return Task(model, data, data, nn.functional.mse_loss, info={"max_eig": float(max_eig), "optimum": optimum})


def _spectrum(kind: str, max_eig: float, condition: float, n: int) -> np.ndarray:
    low = max_eig / condition
    if kind == "log":
        return np.geomspace(low, max_eig, n)
    if kind == "clustered":
        n_top = max(1, n // 10)
        top = np.geomspace(max_eig / 2.0, max_eig, n_top + 1)[1:]  # max_eig itself is always one of them
        return np.concatenate([np.geomspace(low, 2.0 * low, n - n_top), top])
    raise ValueError(f"least_squares: unknown spectrum {kind!r}; expected 'log' or 'clustered'")


BUILTIN_TASKS: Mapping[str, Callable[..., Task]] = {
    "digits_mlp": digits_mlp,
    "digits_cnn": digits_cnn,
    "wine_mlp": wine_mlp,
    "breast_cancer_mlp": breast_cancer_mlp,
    "diabetes_mlp": diabetes_mlp,
    "make_classification": classification_mlp,
    "classification_mlp": classification_mlp,  # alias
    "least_squares": least_squares,
}


def resolve_factory(name: str | Callable[..., Task]) -> Callable[..., Task]:
    """The factory for a built-in name, a ``"package.module:function"``, or a callable (returned as is).

    Raises:
        ImportError: the module cannot be imported or lacks the function.
        ValueError: the name is neither a built-in nor of the form ``module:function``.
    """
    if callable(name):
        return name
    if name in BUILTIN_TASKS:
        return BUILTIN_TASKS[name]
    return resolve_callable(name, what=f"a built-in task {sorted(BUILTIN_TASKS)} or 'package.module:factory'")


class MissingCallable(ImportError):
    """The module imported, and has no callable of the name given."""


def resolve_callable(name: str, *, what: str = "'package.module:function'") -> Callable[..., Any]:
    """The function a ``"package.module:function"`` names, importing its module."""
    module_name, sep, attr = name.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(what)
    module = importlib.import_module(module_name)
    function = getattr(module, attr, None)
    if not callable(function):
        raise MissingCallable(f"module {module_name!r} has no callable {attr!r}")
    return function


def check_task_args(factory: Callable[..., Task], task_args: Mapping[str, Any]) -> str | None:
    """Why ``factory(**task_args)`` cannot be called ("an unexpected keyword argument 'widht'"), or None
    when the arguments fit its signature."""
    try:
        inspect.signature(factory).bind(**task_args)
    except TypeError as exc:
        return str(exc).removeprefix("got ")  # said after autolr's own "got"
    except ValueError:  # no signature available (a builtin): let the call decide
        return None
    return None


def build_task(name: str | Callable[..., Task], task_args: Mapping[str, Any], *, seed: int) -> Task:
    """Seed torch, numpy and random with ``seed``, then build the task."""
    factory = resolve_factory(name)
    seed_everything(seed)
    task = factory(**task_args)
    if not isinstance(task, Task):
        raise TypeError(f"task factory {name!r} returned {type(task).__name__}, expected autolr.Task")
    return task
