"""Comparing studies (``autolr compare``): one table of their best configurations, and overlays.

Read-only: studies are read through :mod:`autolr.store` (a study that is not stored is an error, and no
storage is created), curves through :func:`autolr.tracking.read_trial_curves` (nothing is created in the
MLflow store either), and no task code is imported.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autolr import keys, stability, store
from autolr.config import DEFAULT_TRACKING_URI, StudyConfig, load_study
from autolr.confirm import confirmation, exported_params, exported_trial

__all__ = ["CompareResult", "StudyBest", "compare"]

logger = logging.getLogger(__name__)

PLOTS = ("optimization_histories.png", "best_learning_curves.png", "lr_vs_objective.png")
COLUMNS = ("study", "metric", "direction", "value", "confirmed_mean", "trial", "optimizer", "schedule", "lr", "max_stable_lr", "max_stable_lr_from")


@dataclasses.dataclass(frozen=True)
class StudyBest:
    """One study's exported configuration (``trial`` None: no COMPLETE trial yet) and its stability limit:
    the confirmed winner, or its step back (``lr`` the rate it trained at), with ``value`` its search
    trial's single-seed value and ``confirmed_mean`` its mean over the fresh seeds; without a complete
    confirmation, the best single-seed trial."""

    study: str
    metric: str
    direction: str
    storage: str
    trial: int | None
    value: float | None
    optimizer: str | None
    schedule: str | None
    lr: float | None
    limit: stability.Limit | None
    confirmed_mean: float | None = None  # the export's mean over fresh seeds (None: confirmation off or not complete)
    rows: Sequence[dict[str, Any]] = dataclasses.field(default=(), repr=False)
    study_uid: str | None = None

    def cells(self) -> dict[str, Any]:
        return {
            "study": self.study, "metric": self.metric, "direction": self.direction, "value": self.value,
            "confirmed_mean": self.confirmed_mean, "trial": self.trial, "optimizer": self.optimizer, "schedule": self.schedule,
            "lr": self.lr, "max_stable_lr": self.limit.lr if self.limit else None, "max_stable_lr_from": self.limit.source if self.limit else None,
        }  # fmt: skip


@dataclasses.dataclass(frozen=True)
class CompareResult:
    """The studies compared, in the order given, and the overlay plots written (empty without ``plots_dir``)."""

    studies: list[StudyBest]
    plots: list[Path]

    def table(self) -> str:
        """One line per study, the columns of :data:`COLUMNS` ("-" where there is no value)."""
        body = [[_fmt(s.cells()[c]) for c in COLUMNS] for s in self.studies]
        widths = [max(len(c), *(len(b[i]) for b in body)) if body else len(c) for i, c in enumerate(COLUMNS)]
        line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
        return "\n".join([line(COLUMNS), line(["-" * w for w in widths]), *(line(b) for b in body)])

    def to_dict(self) -> dict[str, Any]:
        return {"studies": [s.cells() for s in self.studies], "plots": [str(p) for p in self.plots]}


def compare(
    paths: Sequence[str | Path | StudyConfig],
    *,
    plots_dir: str | Path | None = None,
    storage: str | None = None,
    tracking_uri: str | None = DEFAULT_TRACKING_URI,
) -> CompareResult:
    """The best configuration of each study, and (with ``plots_dir``) the overlays: optimisation
    histories, the best trials' learning curves (read from MLflow at ``tracking_uri``; None: skipped),
    and lr against the objective per study with its stability limit.

    Args:
        paths: study files (or loaded configs); each read from ``storage`` or its default storage.

    Raises:
        InputError: a study is not in its storage (with the command that creates it).
    """
    if not paths:
        raise ValueError("paths: expected at least one study file, got none")
    studies = [_best(p if isinstance(p, StudyConfig) else load_study(p), storage) for p in paths]
    written: list[Path] = []
    if plots_dir is not None:
        written = _draw(studies, Path(plots_dir), tracking_uri)
    return CompareResult(studies, written)


def _best(config: StudyConfig, storage: str | None) -> StudyBest:
    url = storage or store.default_storage_url(config)
    study = store.load(config, url)
    rows = [store.trial_row(t) for t in study.get_trials(deepcopy=False)]
    trial, winner = exported_trial(study, confirmation(config, study, url), config.direction)  # what autolr export names
    params = exported_params(winner, trial) if trial is not None else {}
    limits = stability.study_limits(rows, store.range_test_limits(study))
    optimizer = params.get("optimizer")
    limit = limits.get(str(optimizer)) if optimizer else None
    return StudyBest(
        config.name, config.metric, config.direction, url, None if trial is None else trial.number, None if trial is None else float(trial.value),
        optimizer, params.get("schedule"), params.get("lr"), limit, confirmed_mean=None if winner is None else winner.mean, rows=rows,
        study_uid=study.user_attrs.get(keys.UID),
    )  # fmt: skip


def _draw(studies: Sequence[StudyBest], folder: Path, tracking_uri: str | None) -> list[Path]:
    from autolr import plots

    data = [{"label": s.study, "metric": s.metric, "direction": s.direction, "rows": s.rows, "limits": stability.study_limits(s.rows)} for s in studies]
    for entry, s in zip(data, studies):
        if s.limit is not None and s.optimizer:
            entry["limits"][s.optimizer] = s.limit  # the same limit as the table's (a range test's, where cached)
    curves = {s.study: _curves(s, tracking_uri) for s in studies if s.trial is not None and tracking_uri}
    for name in (name for name, found in curves.items() if not found):  # a plot that only says "no curves" is easy to misread
        logger.warning("study %s: its best trial has no curves in the MLflow store %s: %s leaves it out (autolr tune's store: the "
                       "folder it ran in, or its --tracking-uri)", name, tracking_uri, PLOTS[1])  # fmt: skip
    return [
        plots.compare_histories(data, path=folder / PLOTS[0]),
        plots.compare_curves({k: v for k, v in curves.items() if v}, path=folder / PLOTS[1]),
        plots.compare_lr(data, path=folder / PLOTS[2]),
    ]


def _curves(s: StudyBest, tracking_uri: str) -> dict[str, Any]:
    from autolr.tracking import read_trial_curves

    return read_trial_curves(tracking_uri, s.study, s.trial, ("train_loss", keys.val_metric(s.metric)), study_uid=s.study_uid)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)
