"""Before the first trial: does the study's code run at all?

A study file names code (``task:`` or ``loop:``) that ``autolr tune`` imports and runs, like a Python
script; reading a study file (``show``, ``export``) never does. Here, once per invocation and before
any store is written, the task is imported, built, and run for one training step and one validation
batch: a factory that fails, arguments it does not take, a batch its steps cannot take or a metric it
does not report is one line naming the key (and the hook to write), exit 2, instead of three failed
trials. A loop cannot be run without running a whole trial; it is imported and checked to be callable.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import os
import pickle
import sys
import sysconfig
import traceback
from pathlib import Path
from typing import Any

import torch

from autolr.batches import UnsizedData
from autolr.config import StudyConfig
from autolr.errors import InputError, StudyFileError
from autolr.objective import make_trainer, resolve_loop, resolve_metric
from autolr.optimizers import OPTIMIZERS, build_optimizer
from autolr.tasks import MissingCallable, Task, build_task, check_task_args, resolve_factory
from autolr.trainer import BatchError, training_step_of, validation_batch_metrics

__all__ = ["check_crosses_processes", "preflight"]

logger = logging.getLogger(__name__)

PREFLIGHT_LR = 1e-3  # any valid rate: the optimizers built here never step
_NOT_USERS = (Path(__file__).resolve().parent, *{Path(sysconfig.get_paths()[k]) for k in ("stdlib", "platstdlib")})  # autolr's, Python's


def preflight(config: StudyConfig) -> Task | None:
    """Check the study's code; returns the task it built (None for a loop).

    Raises:
        StudyFileError: the code cannot be imported, built or run on its own data.
    """
    if config.task is None and config.loop is None:
        raise StudyFileError(
            config.path,
            "task",
            "either task: (a built-in task or 'package.module:factory') or loop: ('package.module:function'), or tune(path, task=...) / tune(path, loop=...) with a callable",
            "<neither>",
        )
    if config.train.device == "cuda" and not torch.cuda.is_available():
        raise StudyFileError(config.path, "train.device", "auto or cpu (torch sees no CUDA device here)", "cuda")
    for name in config.search.optimizers:
        package = OPTIMIZERS[name].package
        if package is not None and importlib.util.find_spec(package) is None:
            raise StudyFileError(config.path, f"search.optimizer.{name}", f"the package {package} installed (pip install 'autolr[lrfree]')", "<not installed>")
    if config.loop is not None:
        _import(config, "loop", lambda: resolve_loop(config.loop))
        logger.info("loop %s: a loop cannot be pre-flighted (autolr sees its batches only as it runs); its first trial is its check", config.code_label)
        return None
    factory = _import(config, "task", lambda: resolve_factory(config.task))
    problem = check_task_args(factory, config.task_args)
    if problem:
        accepted = ", ".join(inspect.signature(factory).parameters)
        raise StudyFileError(config.path, "task_args", f"arguments accepted by {config.code_label}({accepted})", f"<{problem}>")
    try:
        task = build_task(config.task, config.task_args, seed=config.seed)
    except Exception as exc:  # noqa: BLE001 - the user's factory: report it, on one line
        raise StudyFileError(
            config.path, "task", f"a factory that builds an autolr.Task from {dict(config.task_args)}", f"<{_reason(exc)}{_where(exc)}>"
        ) from exc
    _one_step(config, task)
    return task


def check_crosses_processes(config: StudyConfig, jobs: int) -> None:
    """With ``jobs`` > 1, the task or loop must reach worker processes, which start afresh (spawn) and
    import it by name: a function defined in a notebook, a lambda or a nested function cannot.

    Raises:
        InputError: it cannot cross, with what to do instead.
    """
    code = config.code
    if jobs <= 1 or isinstance(code, str):
        return
    why = None
    if getattr(code, "__module__", None) == "__main__" and not _main_is_a_file():
        why = "it is defined in a notebook or an interactive session, which worker processes cannot import"
    else:
        try:
            pickle.dumps(code)
        except Exception as exc:  # noqa: BLE001 - pickle raises several kinds for this
            why = f"worker processes receive it by name and it has none they can import ({_reason(exc)})"
    if why:
        raise InputError(
            f"jobs={jobs}: the {config.code_key} {config.code_label} cannot cross to a worker process: {why}. "
            f"Put it in a .py module and pass it from there (or name it as {config.code_key}: 'module:function'), or run with jobs=1"
        )


def _main_is_a_file() -> bool:
    """Whether ``__main__`` is a script worker processes can run again: not a notebook, ``python -c``
    or a script piped in (``python - < script.py``, whose ``__file__`` is ``<stdin>``)."""
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    return bool(path) and os.path.isfile(path)


def _import(config: StudyConfig, key: str, resolve) -> Any:
    try:
        return resolve()
    except ValueError as exc:
        raise StudyFileError(config.path, key, str(exc), config.code_label) from None
    except Exception as exc:  # noqa: BLE001 - any import-time failure of the user's module
        what = "factory" if key == "task" else "function"
        module = str(config.code_label).partition(":")[0]
        missing = isinstance(exc, ModuleNotFoundError) and exc.name is not None and (module == exc.name or module.startswith(exc.name + "."))
        hint = "is it on PYTHONPATH?" if missing else "the module has no such callable" if isinstance(exc, MissingCallable) else "importing it raised"
        raise StudyFileError(config.path, key, f"an importable 'package.module:{what}' ({hint})", f"<{config.code_label}: {_reason(exc)}>") from None


def _one_step(config: StudyConfig, task: Task) -> None:
    """One training step (forward, backward) and one validation batch, as a trial would run them."""
    metric = resolve_metric(config, task)
    try:
        trainer = make_trainer(config)
    except ValueError as exc:  # e.g. fp16 without CUDA
        raise StudyFileError(config.path, "train.precision", "bf16 or fp32 on this machine", f"<{exc}>") from None
    model = task.model.to(trainer.device)
    try:
        batches = trainer.train_batches(task)
    except UnsizedData:
        raise StudyFileError(config.path, "train.steps_per_epoch", f"batches per epoch, since task {config.code_label}'s train_data has no length",
                             "<not set>") from None  # fmt: skip
    try:
        batch = _first(batches, "train_data")
        with trainer.autocast():
            loss = training_step_of(task)(model, batch)
        if not loss.requires_grad:
            raise BatchError("training_step", "a loss computed from the model's parameters", "one without gradient")
        loss.backward()
        model.zero_grad(set_to_none=True)
        values = validation_batch_metrics(task, config.train.batch_size, trainer.device)
    except BatchError as exc:
        raise StudyFileError(config.path, f"task.{exc.where}", exc.expected, f"<{exc.given}>") from None  # the hook or data at fault, by name
    except (TypeError, ValueError, RuntimeError, KeyError, IndexError, AttributeError) as exc:  # the cause stays chained for the Python API
        raise StudyFileError(config.path, "task", "a model, loss and batches that train one step", f"<{_reason(exc)}{_where(exc)}>") from exc
    finally:
        model.train()
    if metric not in values:
        raise StudyFileError(config.path, "objective.metric", f"one of {sorted(values)} (what task {config.code_label} reports)", config.metric)
    _build_optimizers(config, model)


def _build_optimizers(config: StudyConfig, model: torch.nn.Module) -> None:
    """Each searched optimizer built once over the model's parameters: it takes them, and torch's first
    optimizer imports its compiler stack (seconds) here rather than inside the first trial."""
    for name in config.search.optimizers:
        try:
            build_optimizer(name, model.parameters(), lr=PREFLIGHT_LR)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise StudyFileError(
                config.path, f"search.optimizer.{name}", f"an optimizer that takes the parameters of {config.code_label}", f"<{_reason(exc)}>"
            ) from None


def _first(batches, name: str) -> Any:
    for batch in batches:
        return batch
    raise BatchError(name, "at least one batch", "none")


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".replace("\n", " ")


def _where(exc: BaseException) -> str:
    """`` at FILE:LINE in FUNCTION``: the last frame of the user's own code the error passed through
    (not torch's, autolr's or another installed package's), so a wrong layer size reads as the model's
    line; empty where none is."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not _installed(f.filename)]
    return f" at {Path(frames[-1].filename).name}:{frames[-1].lineno} in {frames[-1].name}" if frames else ""


def _installed(filename: str) -> bool:
    """Python's own library, an installed package or autolr: not where a user's error is."""
    parts, path = Path(filename).parts, Path(filename)
    return "site-packages" in parts or "dist-packages" in parts or filename.startswith("<") or any(path.is_relative_to(p) for p in _NOT_USERS)
