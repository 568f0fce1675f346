"""The study side of the LR range test: :func:`find_lr` and ``search.lr: auto``.

``lr: auto`` runs the range test (:mod:`autolr.finder`) once per optimizer of the study, before the
first trial. Each optimizer's log-uniform lr bounds run from a decade below the suggestion up to the
lowest rate the test saw unstable, the suggestion is enqueued as a trial of its own, and the test is
logged to MLflow as a run under the study's parent run. Its result is cached in the study's storage (a
study user attr per optimizer, keyed by everything that shapes the result), so a resumed study reads
it back instead of measuring again; ``autolr find-lr`` reads the same cache.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from autolr import keys, stability, store
from autolr.config import DEFAULT_TRACKING_URI, StudyConfig, load_study
from autolr.errors import StudyFileError
from autolr.finder import MIN_RANGE_TEST_STEPS, RangeTestResult, range_test
from autolr.objective import make_trainer
from autolr.optimizers import OPTIMIZERS, build_optimizer
from autolr.params import Fixed
from autolr.space import _representative
from autolr.tasks import Task, build_task
from autolr.tracking import open_tracker
from autolr.trainer import as_loss, batched, is_map_dataset, pick_device

__all__ = ["FindLrReport", "auto_lr_bounds", "find_lr", "lr_bounds_from", "range_test_for"]

if TYPE_CHECKING:
    from autolr.tracking import NullTracker, Tracker

logger = logging.getLogger(__name__)

FINDER_VERSION = 3  # part of the cache key: a new detector or rule measures afresh
BOUNDS_BELOW_SUGGESTION = 10.0  # the searched range starts this factor below the suggestion


@dataclasses.dataclass(frozen=True)
class FindLrReport:
    """The range tests of a study, per optimizer; ``suggestion`` and ``max_stable_lr`` are those of
    ``optimizer`` (the one asked for, else the study's first).

    Text and JSON name the same three quantities per optimizer: ``suggestion`` (the rate to train at),
    ``max_stable_lr`` (the study's stability limit, :mod:`autolr.stability`, with ``max_stable_lr_from``
    saying what it rests on) and ``search_bounds`` (what ``lr: auto`` searches)."""

    study: str
    task: str
    optimizer: str
    run_steps: int
    results: Mapping[str, RangeTestResult]
    bounds: Mapping[str, tuple[float, float]]
    cached: Mapping[str, bool]
    run_ids: Mapping[str, str] = dataclasses.field(default_factory=dict)
    limits: Mapping[str, stability.Limit] = dataclasses.field(default_factory=dict)

    def limit(self, name: str) -> stability.Limit:
        """The stability limit of optimizer ``name``: the study's where it has one, else this range test's."""
        return self.limits.get(name) or stability.Limit(self.results[name].max_stable_lr, stability.FROM_RANGE_TEST)

    @property
    def suggestion(self) -> float:
        return self.results[self.optimizer].suggestion

    @property
    def max_stable_lr(self) -> float:
        return self.limit(self.optimizer).lr

    def to_dict(self) -> dict[str, Any]:
        main = self._section(self.optimizer)
        return {
            "study": self.study,
            "task": self.task,
            "optimizer": self.optimizer,
            **{name: main[name] for name in ("suggestion", "max_stable_lr", "max_stable_lr_from", "search_bounds")},
            "run_steps": self.run_steps,
            "optimizers": {name: self._section(name) for name in self.results},
        }

    def _section(self, name: str) -> dict[str, Any]:
        section = self.results[name].to_dict()
        section.pop("lr_range", None)  # (suggestion, range test's limit): the same numbers under other names
        limit = self.limit(name)
        section.update(
            range_test_max_stable_lr=section["max_stable_lr"], max_stable_lr=limit.lr, max_stable_lr_from=limit.source,
            search_bounds=list(self.bounds[name]), cached=self.cached[name], mlflow_run_id=self.run_ids.get(name),
        )  # fmt: skip
        return section

    def describe(self) -> str:
        """A short table, one optimizer a line, named as in the JSON, and what to do with it."""
        lines = [f"LR range test of study {self.study} (task {self.task}, for a run of {self.run_steps} steps)"]
        w = max([10, *(len(name) for name in self.results)])  # schedulefree_adamw is 18 wide
        lines.append(
            f"{'optimizer':<{w}} {'suggestion':>10} {'max_stable_lr':>13}  {'max_stable_lr_from':<20} {'search_bounds':<20} {'stable_lr .. unstable_lr':<24} steps"
        )
        for name, r in self.results.items():
            unstable = f"{r.unstable_lr:.4g}" if r.unstable_lr is not None else "none"
            low, high = self.bounds[name]
            limit = self.limit(name)
            cached = " (cached)" if self.cached[name] else ""
            lines.append(
                f"{name:<{w}} {r.suggestion:>10.4g} {limit.lr:>13.4g}  {limit.source:<20} {f'{low:.4g} .. {high:.4g}':<20} "
                f"{f'{r.stable_lr:.4g} .. {unstable}':<24} {r.steps}{cached}"
            )
        lines.append(self._advice())
        return "\n".join(lines)

    def _advice(self) -> str:
        """What to do, and what the limit rests on: a limit from the study's trials is the highest peak
        rate they were stable at (what they tried, warmup and schedule included), not a measured
        edge, so it is said beside the range test's own, not as the limit the suggestion keeps under."""
        limit, measured = self.limit(self.optimizer), self.results[self.optimizer].max_stable_lr
        head = f"train {self.optimizer} at lr {self.suggestion:.4g}"
        if limit.source == stability.FROM_RANGE_TEST:
            return f"{head}; constant rates up to {limit.lr:.4g} stay stable (from the range test)"
        return (
            f"{head} (the range test: constant rates stable up to {measured:.4g}); the study's {limit.source} reached {limit.lr:.4g} "
            "(the highest peak rate they were stable at: what they tried, not a measured edge)"
        )


def lr_bounds_from(result: RangeTestResult) -> tuple[float, float]:
    """The log-uniform bounds to search: a decade below the suggestion up to the lowest rate seen
    unstable (the limit itself when nothing was), so the region just under the limit stays in."""
    high = max(result.unstable_lr or result.max_stable_lr, result.max_stable_lr)
    return (result.suggestion / BOUNDS_BELOW_SUGGESTION, high)


def range_test_for(config: StudyConfig, optimizer: str, *, steps: int | None = None) -> RangeTestResult:
    """Run the range test on the study's task, with ``optimizer`` as the study configures it (a searched
    hyperparameter sits at its default, or mid-range), for a run of the study's length.

    Raises:
        RuntimeError: the task cannot be range-tested (its loss is not finite before any step).
    """
    if config.task is None:
        raise StudyFileError(
            config.path, config.code_key, "a task: (the range test runs autolr's own steps on the task's batches; a loop's are its own)", config.code_label
        )
    task = build_task(config.task, config.task_args, seed=config.seed)
    model = task.model.to(pick_device(config.train.device))
    hparams = _fixed_hparams(config, optimizer)
    opt = build_optimizer(optimizer, model.parameters(), config.finder.start_lr, hparams)
    try:
        return range_test(
            model,
            opt,
            batched(task.train_data, config.train.batch_size),  # as the trainer takes it
            loss_fn=task.loss_fn if task.training_step is None else None,
            training_step=None if task.training_step is None else (lambda m, b: as_loss(task.training_step(m, b))),
            batch_size=config.train.batch_size if is_map_dataset(task.train_data) else None,  # a DataLoader keeps its own
            steps=steps or config.finder.steps,
            start_lr=config.finder.start_lr,
            end_lr=config.finder.end_lr,
            run_steps=_run_steps(config, task),
            grad_clip=config.train.grad_clip,
            seed=config.seed,
        )
    except ValueError as exc:  # the task itself is broken (e.g. a NaN loss before any step): say where
        raise RuntimeError(f"{config.path}: the range test of {optimizer} on task {config.code_label} failed: {exc}") from exc


def find_lr(
    study: str | Path | StudyConfig,
    *,
    optimizer: str | None = None,
    steps: int | None = None,
    storage: str | None = None,
    tracking_uri: str | None = DEFAULT_TRACKING_URI,
) -> FindLrReport:
    """The LR range test of a study file, per optimizer (only ``optimizer`` when given).

    A result the study's storage already holds for the same settings (from ``lr: auto``) is read back;
    otherwise the test runs, and is logged to MLflow as a run of the study's experiment unless
    ``tracking_uri`` is None. Nothing is written to the study's storage.

    Raises:
        StudyFileError: the study names no task (a ``loop:``, or none), ``optimizer`` is not one of the
            study's, or ``steps`` is below ``MIN_RANGE_TEST_STEPS``.
    """
    config = study if isinstance(study, StudyConfig) else load_study(study)
    if config.loop is not None:
        raise StudyFileError(
            config.path, "loop", "a task: instead (the range test trains autolr's trainer on the task's batches; a loop's are its own)", config.code_label
        )
    if config.task is None:
        raise StudyFileError(
            config.path, "task", 'a built-in task or "package.module:function" (a study for a callable: tune it with autolr.tune(path, task=...))', None
        )
    names = _optimizers(config, optimizer)
    if steps is not None and steps < MIN_RANGE_TEST_STEPS:
        raise StudyFileError(config.path, "--steps", f"an integer >= {MIN_RANGE_TEST_STEPS} (enough for a few probes)", steps)
    stored = _stored_study(config, storage)
    cache = _read_only_cache(config, stored)
    run_steps = _run_steps(config)
    tracker = open_tracker(tracking_uri, config.name)
    results, bounds, cached, run_ids = {}, {}, {}, {}
    try:
        for name in names:
            key = _cache_key(config, name, steps)
            hit = _cached_result(cache.get(name), key)
            results[name] = hit or range_test_for(config, name, steps=steps)
            bounds[name], cached[name] = lr_bounds_from(results[name]), hit is not None
            if hit is None:
                run_id = log_range_test(tracker, None, config, name, results[name], bounds[name])
                if run_id is not None:
                    run_ids[name] = run_id
    finally:
        tracker.close()
    return FindLrReport(config.name, config.code_label, names[0], run_steps, results, bounds, cached, run_ids, _study_limits(stored))


def auto_lr_bounds(
    config: StudyConfig, study: optuna.Study, tracker: Tracker | NullTracker, parent_run_id: str | None = None
) -> dict[str, tuple[float, float]]:
    """``search.lr: auto``: each optimizer's lr bounds from its range test, measured once per study.

    A fresh test is logged under ``parent_run_id``, its suggestion is enqueued as a trial, and its
    result is cached in the study's user attrs; a resumed study reads the cache and does neither.
    """
    bounds = {}
    for name in config.search.optimizers:
        key = _cache_key(config, name, None)
        result = _cached_result(study.user_attrs.get(keys.RANGE_TEST_CACHE.format(optimizer=name)), key)
        if result is not None:
            logger.info("lr: auto: %s bounds from the cached range test", name)
            bounds[name] = lr_bounds_from(result)
            continue
        result = range_test_for(config, name)
        bounds[name] = lr_bounds_from(result)
        log_range_test(tracker, parent_run_id, config, name, result, bounds[name])
        _enqueue_suggestion(study, config, name, result.suggestion)
        study.set_user_attr(keys.RANGE_TEST_CACHE.format(optimizer=name), {"key": key, "result": result.to_dict()})
        logger.info("lr: auto: %s in [%.3g, %.3g], suggestion %.3g enqueued", name, *bounds[name], result.suggestion)
    return bounds


def log_range_test(
    tracker: Tracker | NullTracker, parent_run_id: str | None, config: StudyConfig, optimizer: str, result: RangeTestResult, bounds: tuple[float, float]
) -> str | None:
    """The range test as an MLflow run: results and chosen bounds as params, the curve and the probes
    as metrics, the plot of loss against lr as a PNG. Returns the run's id (None: tracking is off)."""
    if not tracker.active:
        return None
    params = {
        "optimizer": optimizer, "suggestion": result.suggestion, "max_stable_lr": result.max_stable_lr,
        "stable_lr": result.stable_lr, "unstable_lr": result.unstable_lr, "lr_low": bounds[0], "lr_high": bounds[1],
        "steps": result.steps, "samples": result.samples, "finder.steps": config.finder.steps,
        "finder.start_lr": config.finder.start_lr, "finder.end_lr": config.finder.end_lr, "run_steps": _run_steps(config),
    }  # fmt: skip
    curve = {
        "loss": result.losses, "lr": result.lrs, "grad_norm": result.grad_norms,
        "probe_lr": [p.lr for p in result.probes], "probe_end_loss": [p.end_loss for p in result.probes],
        "probe_stable": [float(p.stable) for p in result.probes],
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="autolr-range-test-") as folder:
        plot = _plot(result, bounds, f"{config.name}: {optimizer}", Path(folder) / f"range_test_{optimizer}.png")
        return tracker.log_range_test(parent_run_id, optimizer=optimizer, params=params, curve=curve, artifacts=[plot] if plot else [])


def _plot(result: RangeTestResult, bounds: tuple[float, float], title: str, path: Path) -> Path | None:
    from autolr.plots import plot_range_test

    try:
        return plot_range_test(
            result.lrs, result.losses, probes=[p.to_dict() for p in result.probes], suggestion=result.suggestion,
            max_stable_lr=result.max_stable_lr, bounds=bounds, title=title, path=path,
        )  # fmt: skip
    except Exception:  # noqa: BLE001 - a missing plot loses nothing the metrics do not hold
        logger.warning("could not draw the range test plot", exc_info=True)
        return None


def _optimizers(config: StudyConfig, optimizer: str | None) -> list[str]:
    names = list(config.search.optimizers)
    if optimizer is None:
        return names
    if optimizer not in names:
        raise StudyFileError(config.path, "--optimizer", f"one of the study's optimizers {names}", optimizer)
    return [optimizer]


def _fixed_hparams(config: StudyConfig, optimizer: str) -> dict[str, Any]:
    specs = {p.name: p for p in OPTIMIZERS[optimizer].params}
    settings = config.search.optimizers[optimizer]
    return {name: s.value if isinstance(s, Fixed) else _representative(s, specs[name]) for name, s in settings.items()}


def _run_steps(config: StudyConfig, task: Task | None = None) -> int:
    """Optimizer steps of one trial, as autolr's trainer counts them (epochs or max_steps, accumulation,
    the task's own DataLoader)."""
    task = task or build_task(config.task, config.task_args, seed=config.seed)
    return make_trainer(config).total_steps(task)


def _cache_key(config: StudyConfig, optimizer: str, steps: int | None) -> str:
    """Everything that shapes a range test's result, as one canonical string."""
    key = {
        "version": FINDER_VERSION, "task": config.code_label, "task_args": dict(config.task_args), "optimizer": optimizer,
        "hparams": _fixed_hparams(config, optimizer), "epochs": config.train.epochs, "batch_size": config.train.batch_size,
        "device": config.train.device, "grad_clip": config.train.grad_clip, "seed": config.seed,
        "steps": steps or config.finder.steps, "start_lr": config.finder.start_lr, "end_lr": config.finder.end_lr,
    }  # fmt: skip
    return json.dumps(key, sort_keys=True, default=str)


def _cached_result(entry: object, key: str) -> RangeTestResult | None:
    if not isinstance(entry, dict) or entry.get("key") != key:
        return None
    try:
        return RangeTestResult.from_dict(entry["result"])
    except (KeyError, TypeError, ValueError):
        logger.warning("ignoring an unreadable cached range test")
        return None


def _stored_study(config: StudyConfig, storage: str | None) -> optuna.Study | None:
    """The study as stored, or None when it is not (and no empty database is created just to look)."""
    url = storage or store.default_storage_url(config)
    return store.load(config, url) if store.exists(config.name, url) else None


def _read_only_cache(config: StudyConfig, study: optuna.Study | None) -> dict[str, object]:
    """The cached range tests of the study, per optimizer, or nothing when the study is not stored."""
    if study is None:
        return {}
    attrs = study.user_attrs
    return {name: attrs.get(keys.RANGE_TEST_CACHE.format(optimizer=name)) for name in config.search.optimizers}


def _study_limits(study: optuna.Study | None) -> dict[str, stability.Limit]:
    """The stability limits the stored study gives (the same as its parent run's description)."""
    if study is None:
        return {}
    return stability.study_limits([store.trial_row(t) for t in study.get_trials(deepcopy=False)], store.range_test_limits(study))


def _enqueue_suggestion(study: optuna.Study, config: StudyConfig, optimizer: str, lr: float) -> None:
    if config.sampler == "grid":  # a grid tries its own points only
        return
    params: dict[str, Any] = {"lr": lr}
    if len(config.search.optimizers) > 1:  # a single optimizer is not a searched parameter (autolr.space)
        params["optimizer"] = optimizer
    study.enqueue_trial(params, user_attrs={keys.SOURCE: "range_test"}, skip_if_exists=True)
