"""Exporting the best configuration, and reading it back in a user's own training script.

An export is a flat YAML or JSON object: ``study``, ``metric``, ``direction``, ``value``, ``trial``,
``params`` (``optimizer``, ``lr``, ``schedule``, ``warmup`` and every optimizer/schedule parameter,
defaults included), the training budget (``epochs``, ``batch_size``, ``total_steps``) and the task.

    best = autolr.load_best("best.yaml")
    optimizer = best.build_optimizer(model.parameters())
    scheduler = best.build_scheduler(optimizer, total_steps=best.total_steps)
    # per step: optimizer.step(); scheduler.step()
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from autolr import keys
from autolr._yaml import Dumper, Loader
from autolr.confirm import confirmation, exported_params, exported_trial
from autolr.confirm import status as confirm_status
from autolr.hparams import RunConfig
from autolr.scheduler import StepScheduler
from autolr.seeds import trial_seed

__all__ = ["BestConfig", "best_export", "load_best", "to_yaml", "write_export"]

_REQUIRED = ("study", "metric", "direction", "value", "trial", "params", "epochs", "batch_size")


def best_export(config, study, url: str) -> dict[str, Any] | None:
    """The export object of the study's winner (None when there is no COMPLETE trial yet).

    The winner is the configuration with the best mean over the confirmation's fresh seeds (or its
    step back: ``trial``'s configuration at ``confirmed.lr_scale`` times its rate, which ``params``
    holds), and ``value`` that mean, with the spread under ``confirmed``; without a complete
    confirmation (it is off, or not run yet), the best single-seed trial, with ``confirmed: null``.
    """
    confirmations = confirmation(config, study, url)
    best, winner = exported_trial(study, confirmations, config.direction)
    if best is None:
        return None
    # what trained it: the study file's task/loop, or (a study for callables) what tune recorded
    code = {"key": config.code_key, "label": config.code_label} if config.code is not None else study.user_attrs.get(keys.CODE, {"key": "task", "label": None})
    return {
        "study": config.name,
        "metric": keys.val_metric(config.metric),  # as logged
        "direction": config.direction,
        "value": float(best.value) if winner is None else winner.mean,
        "single_seed_value": float(best.value),
        "confirmed": None if winner is None else winner.to_dict(),
        "confirmation": confirm_status(confirmations, config.confirm.enabled),  # off | pending | complete | all dropped
        "trial": best.number,
        "params": exported_params(winner, best),
        "epochs": None if code["key"] == "loop" else config.train.epochs,  # a loop's budget is its own
        "batch_size": None if code["key"] == "loop" else config.train.batch_size,
        "total_steps": best.user_attrs.get(keys.SCHEDULE_STEPS, best.user_attrs.get(keys.STEPS)),  # the span of the schedule it trained
        "train": None if code["key"] == "loop" else _mechanics(config.train),
        code["key"]: code["label"],
        "task_args": dict(config.task_args),
        **_seeds(config, best),
    }


def _seeds(config, trial) -> dict[str, int]:
    """``seed``: the study's seed the search trained on (``autolr tune --seed N``'s N, which the study
    file does not hold; the file's for trials of an autolr that did not record it); with
    ``train.seed_per_trial`` also ``trial_seed``, the trial's own (the study's seed + an offset of its
    number, :func:`autolr.seeds.trial_seed`): what reproduces its single_seed_value."""
    trained_on = trial.user_attrs.get(keys.SEED)
    if trained_on is None:
        return {"seed": config.seed}
    if config.train.seed_per_trial:
        return {"seed": trained_on - trial_seed(0, trial.number), "trial_seed": trained_on}
    return {"seed": trained_on}


def _mechanics(train) -> dict[str, Any]:
    """What shaped the tuned run beside epochs and batch size: its optimizer steps per micro-batch,
    its step budget, its clipping and its precision (``total_steps`` already counts the first two)."""
    return {"accumulate": train.accumulate, "max_steps": train.max_steps, "grad_clip": train.grad_clip, "precision": train.precision}


def to_yaml(export: Mapping[str, Any]) -> str:
    return yaml.dump(dict(export), Dumper=Dumper, sort_keys=False)  # read back by load_best's Loader as written


def write_export(export: Mapping[str, Any], path: str | Path | None, fmt: str = "yaml") -> str:
    """Serialise ``export`` as ``yaml`` or ``json``; write it to ``path`` when given. Returns the text."""
    if fmt not in ("yaml", "json"):
        raise ValueError(f"format: expected yaml or json, got {fmt!r}")
    text = to_yaml(export) if fmt == "yaml" else json.dumps(dict(export), indent=2) + "\n"
    if path is not None:
        Path(path).write_text(text, encoding="utf-8")
    return text


@dataclasses.dataclass(frozen=True)
class BestConfig:
    """An exported configuration, ready to rebuild its optimizer and scheduler."""

    study: str
    metric: str
    direction: str
    value: float
    trial: int
    params: Mapping[str, Any]
    epochs: int | None
    batch_size: int | None
    total_steps: int | None = None
    task: str | None = None  # the task (or, for a loop: study, the loop) that trained it, and how
    loop: str | None = None
    task_args: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    seed: int | None = None
    single_seed_value: float | None = None  # the trial's value on the study's seed
    confirmed: Mapping[str, Any] | None = None  # {trial, seeds, values, mean, std[, lr_scale]} on fresh seeds; None: not confirmed
    train: Mapping[str, Any] | None = None  # accumulate, max_steps, grad_clip, precision of the tuned run (None: a loop's own)
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def run_config(self) -> RunConfig:
        return RunConfig.from_flat(self.params)

    def build_optimizer(self, params: torch.nn.Module | Iterable[Any]) -> torch.optim.Optimizer:
        """The tuned optimizer, at the tuned peak lr, over ``params``: a model (its trainable
        parameters, as ``trial.build_optimizer(model)`` takes them), ``model.parameters()`` or param groups."""
        if isinstance(params, torch.nn.Module):
            params = [p for p in params.parameters() if p.requires_grad]
        return self.run_config.build_optimizer(params)

    def build_scheduler(self, optimizer: torch.optim.Optimizer, total_steps: int | None = None) -> StepScheduler:
        """The tuned per-step schedule; ``total_steps`` defaults to the tuned run's (epochs x batches)."""
        total = total_steps if total_steps is not None else self.total_steps
        if total is None:
            raise ValueError("total_steps: expected the number of optimisation steps of your run, got None")
        mode = "min" if self.direction == "minimize" else "max"
        return self.run_config.build_scheduler(optimizer, total, mode=mode)


def load_best(path: str | Path) -> BestConfig:
    """Read an export written by ``autolr export`` (YAML or JSON)."""
    path = Path(path)
    # the study files' loader: JSON is YAML too, but YAML 1.1 reads JSON's 1e-08 (Adam's eps) as a string
    data = yaml.load(path.read_text(encoding="utf-8"), Loader=Loader)  # noqa: S506 - a safe loader
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an autolr export (a mapping), got {type(data).__name__}")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise ValueError(f"{path}: expected the keys {list(_REQUIRED)} of an autolr export; missing {missing}")
    try:
        RunConfig.from_flat(data["params"])  # validate now, with the study file's bounds, not at the first build
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    known = {f.name for f in dataclasses.fields(BestConfig)} - {"extra"}
    return BestConfig(**{k: v for k, v in data.items() if k in known}, extra={k: v for k, v in data.items() if k not in known})
