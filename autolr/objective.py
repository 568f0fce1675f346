"""The Optuna objective: one trial = suggest a run, train it (autolr's trainer on the task, or the
user's own loop with an :class:`autolr.Trial`), report, record.

Outcomes, each recorded the same way in Optuna (state, user attrs) and MLflow (tags, run status):
- COMPLETE: the objective metric after the last epoch is the trial's value;
- PRUNED, diverged: the divergence guard fired; ``autolr.prune_reason`` and ``autolr.divergence_step``;
- PRUNED, curve: the pruner judged the validation curve hopeless at some epoch;
- FAIL: anything raised (the study goes on); KILLED in MLflow when interrupted.

COMPLETE and PRUNED are stored in Optuna (``study.tell``) before the MLflow run closes: a result the
Optuna storage could not take (a full disk) ends the run FAIL in MLflow too, never COMPLETE. The trial
is told here, so the objective runs under :func:`autolr.driver.run_one`, not ``study.optimize``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import optuna

from autolr import keys, store
from autolr.config import StudyConfig
from autolr.errors import LoopContractError, StudyFileError
from autolr.guard import Diverged, DivergenceGuard
from autolr.hparams import RunConfig
from autolr.progress import NullProgress
from autolr.retry import StorageFull, StorageUnavailable
from autolr.seeds import trial_seed
from autolr.space import LrBounds, suggest_run
from autolr.tasks import build_task, resolve_callable, seed_everything
from autolr.trainer import Trainer, pick_device
from autolr.trial import Pruned, Trial, TrialReport

__all__ = ["Objective", "resolve_metric"]

if TYPE_CHECKING:  # mlflow loads only where tracking is on
    from autolr.tracking import NullTracker, NullTrialRun, Tracker, TrialRun

logger = logging.getLogger(__name__)


def resolve_metric(config: StudyConfig, task) -> str:
    """The logged name of the objective metric: ``accuracy`` and ``val_accuracy`` both work.

    Raises:
        StudyFileError: the task logs no such metric.
    """
    if task.validation_step is not None:  # its keys are known once it ran: the pre-flight checks them
        return keys.val_metric(config.metric)
    available = ["val_loss", *(keys.val_metric(m) for m in task.metrics)]
    if keys.val_metric(config.metric) in available:
        return keys.val_metric(config.metric)
    raise StudyFileError(config.path, "objective.metric", f"one of {available} (from task {config.code_label})", config.metric)


class Objective:
    """The objective of :func:`autolr.driver.run_one` (it tells the trial's result itself); picklable,
    so worker processes can rebuild it."""

    def __init__(
        self, config: StudyConfig, lr_bounds: LrBounds, *, tracker: Tracker | NullTracker, parent_run_id: str | None, progress: NullProgress | None = None
    ) -> None:
        self.config = config
        self.progress = progress or NullProgress()
        self.lr_bounds = dict(lr_bounds)
        self.tracker = tracker
        self.parent_run_id = parent_run_id

    def __call__(self, trial: optuna.Trial) -> float:
        cfg = self._seeded(trial)
        run_config = suggest_run(trial, cfg.search, self.lr_bounds, grid=cfg.sampler == "grid")
        flat = run_config.flat()
        trial.set_user_attr(keys.PARAMS, flat)
        run = self.tracker.trial_run(self.parent_run_id, trial.number, flat, **_run_labels(trial, cfg.seed))
        try:
            with run:
                return self._train(cfg, trial, run_config, run)
        except (optuna.TrialPruned, StorageFull, StorageUnavailable):
            raise  # the storage failing cannot take an error attr either
        except Exception as exc:
            trial.set_user_attr(keys.ERROR, f"{type(exc).__name__}: {exc}"[:500])
            raise

    def _seeded(self, trial: optuna.Trial) -> StudyConfig:
        """The study's configuration, seeded for this trial: a search trial trains on the invocation's
        seed (``--seed`` or the file's), with ``train.seed_per_trial`` on its own, and records it as
        ``autolr.seed`` for the export; a confirmation run keeps its fresh one."""
        cfg = self.config
        if keys.CONFIRM_OF in trial.user_attrs:
            return cfg
        seed = trial_seed(cfg.seed, trial.number) if cfg.train.seed_per_trial else cfg.seed
        trial.set_user_attr(keys.SEED, seed)
        return dataclasses.replace(cfg, seed=seed)

    def _train(self, cfg: StudyConfig, trial: optuna.Trial, run_config: RunConfig, run: TrialRun | NullTrialRun) -> float:
        try:
            if cfg.loop is not None:
                report, value, steps = self._run_loop(cfg, trial, run_config, run)
            else:
                report, value, steps = self._run_task(cfg, trial, run_config, run)
        except optuna.TrialPruned as exc:  # autolr's TrialPruned, or a loop's own optuna.TrialPruned
            diverged, step = getattr(exc, "diverged", False), getattr(exc, "step", None)
            if not diverged:
                self._report.record_loss_ratio()
            self._record_prune(trial, run, getattr(exc, "reason", None) or f"pruned: {exc}", divergence_step=step, diverged=diverged)
            raise
        trial.set_user_attr(keys.STEPS, steps)
        report.record_loss_ratio()
        if not math.isfinite(value):  # the guard off, or a loop's return: still divergence, not a bug
            reason = f"diverged: {report.metric} {value} {_where(report, loop=cfg.loop is not None)}"
            step = steps - 1 if steps else None
            self._record_prune(trial, run, reason, divergence_step=step, diverged=True)
            raise Pruned(reason, step=step, diverged=True)
        store.tell(trial, value)
        run.end("COMPLETE", {keys.VALUE: value})
        return value

    def _run_task(self, cfg: StudyConfig, trial: optuna.Trial, run_config: RunConfig, run: TrialRun | NullTrialRun) -> tuple[TrialReport, float, int]:
        """autolr's trainer on the study's task."""
        task = build_task(cfg.task, cfg.task_args, seed=cfg.seed)
        metric = resolve_metric(cfg, task)
        self._report = report = TrialReport(trial, run, metric, cfg.pruning.curve != "none", progress=self.progress, epochs=cfg.train.epochs)
        trainer = make_trainer(cfg, callbacks=[report], layer_stats_every=cfg.tracking.layer_stats_every if run.active else 0, monitor=metric)
        optimizer = run_config.build_optimizer(task.model.parameters())
        mode = "min" if cfg.direction == "minimize" else "max"
        scheduler = run_config.build_scheduler(optimizer, trainer.total_steps(task), mode=mode)
        try:
            result = trainer.fit(task, optimizer, scheduler)
        except Diverged as exc:
            raise Pruned(exc.reason, step=exc.step, diverged=True) from None
        return report, result.final[metric], result.steps

    def _run_loop(self, cfg: StudyConfig, trial: optuna.Trial, run_config: RunConfig, run: TrialRun | NullTrialRun) -> tuple[TrialReport, float, int]:
        """The user's own loop, handed an :class:`autolr.Trial`; its return value is the trial's."""
        loop = resolve_loop(cfg.loop)
        metric = keys.val_metric(cfg.metric)
        self._report = report = TrialReport(trial, run, metric, cfg.pruning.curve != "none", progress=self.progress)
        guard = DivergenceGuard(cfg.pruning.loss_factor) if cfg.pruning.divergence else None
        handle = Trial(trial, run_config, report, guard=guard, layer_stats_every=cfg.tracking.layer_stats_every if run.active else 0,
                       direction=cfg.direction, train=cfg.train, seed=cfg.seed)  # fmt: skip
        seed_everything(cfg.seed)
        returned = loop(handle)
        handle.finish()
        if handle.schedule_steps not in (None, handle.steps):  # what the export's total_steps rebuilds (else the steps it ran: the same)
            trial.set_user_attr(keys.SCHEDULE_STEPS, handle.schedule_steps)
        said = {kind: why for kind, why in (("schedule", handle.schedule_mismatch()), ("fault", handle.training_fault())) if why is not None}
        if said:  # on the trial, for the summary of tune and show, where a line in the log is easy to miss
            trial.set_user_attr(keys.LOOP_WARNINGS, said)
        for kind, why in said.items():
            if (cfg.name, kind) not in _WARNED:  # once per study and process: every trial would say it
                _WARNED.add((cfg.name, kind))
                logger.warning("%s: loop %s: %s", cfg.path, cfg.code_label, why)
        return report, _loop_value(returned, metric, report, cfg.path), handle.steps

    def _record_prune(self, trial, run, reason: str, *, divergence_step: int | None, diverged: bool) -> None:
        trial.set_user_attr(keys.PRUNE_REASON, reason)
        trial.set_user_attr(keys.DIVERGED, diverged)
        if divergence_step is not None:
            trial.set_user_attr(keys.DIVERGENCE_STEP, divergence_step)
            trial.set_user_attr(keys.STEPS, divergence_step + 1)
        tags = {keys.PRUNE_REASON: reason}
        if divergence_step is not None:
            tags[keys.DIVERGENCE_STEP] = divergence_step
        store.tell(trial, state=optuna.trial.TrialState.PRUNED)
        run.end("PRUNED", tags)


_WARNED: set[tuple[str, str]] = set()  # (study, what) a loop's schedule mismatch or training fault was reported for in this process


def _run_labels(trial: optuna.Trial, seed: int) -> dict[str, Any]:
    """A confirmation run (a search trial's configuration on a fresh seed; the step back at a factor
    of its rate) is told apart in MLflow."""
    of, scale = trial.user_attrs.get(keys.CONFIRM_OF), trial.user_attrs.get(keys.LR_SCALE)
    if of is None:  # a search trial; one autolr enqueued (the range test's suggestion, the schedule sweep, a retry) says so
        tags = {key: trial.user_attrs[key] for key in (keys.SOURCE, keys.RETRY_OF) if trial.user_attrs.get(key) is not None}
        return {"tags": tags} if tags else {}
    if scale is None:
        return {"role": keys.ROLE_CONFIRM, "name": f"confirm-{of}-seed{seed}", "tags": {keys.CONFIRM_OF: of, keys.SEED: seed}}
    return {
        "role": keys.ROLE_CONFIRM,
        "name": f"confirm-{of}-lr{scale:g}x-seed{seed}",
        "tags": {keys.CONFIRM_OF: of, keys.SEED: seed, keys.LR_SCALE: f"{scale:g}"},
    }  # 0.49, not 0.7**2's 0.48999999999999994


def make_trainer(config: StudyConfig, **kwargs: Any) -> Trainer:
    """autolr's trainer with the study file's budget and mechanics (``train:``, ``pruning:``)."""
    t = config.train
    return Trainer(
        epochs=t.epochs,
        batch_size=t.batch_size,
        device=pick_device(t.device),
        guard=DivergenceGuard(config.pruning.loss_factor) if config.pruning.divergence else None,
        grad_clip=t.grad_clip,
        seed=config.seed,
        precision=t.precision,
        accumulate=t.accumulate,
        max_steps=t.max_steps,
        steps_per_epoch=t.steps_per_epoch,
        **kwargs,
    )


def resolve_loop(loop: str | Callable[..., Any]) -> Callable[..., Any]:
    """The user's training loop: a callable as it is, or the function a ``"package.module:function"`` names."""
    return loop if callable(loop) else resolve_callable(loop)


def _where(report: TrialReport, *, loop: bool) -> str:
    """Where a trial's non-finite value came from: its last epoch, or a loop's return when its last
    ``trial.epoch`` reported a finite value (said beside it) or none."""
    last = report.last_metrics.get(report.metric)
    if not loop or (isinstance(last, float) and not math.isfinite(last)):
        return "after the last epoch"
    return "returned by the loop" + (f" (its last trial.epoch reported {last:.4g})" if isinstance(last, float) else "")


def _loop_value(returned: Any, metric: str, report: TrialReport, path: str) -> float:
    """The trial's value: what the loop returned (a number, or a dict holding the objective's metric),
    or the metric of its last ``trial.epoch`` when it returned nothing. Anything else breaks the
    loop's contract: a :class:`LoopContractError` on the ``loop`` key (:func:`autolr.driver.run_trials`
    stops a study none of whose trials completed with it, in one line, exit 2)."""
    if isinstance(returned, Mapping):
        name = keys.metric_name_in(returned, metric)
        if name is None:
            raise LoopContractError(path, "loop", f"a loop returning a number or a dict holding {metric!r}", f"<a dict of {sorted(map(str, returned))}>")
        if returned[name] is None:
            raise LoopContractError(path, "loop", f"a loop returning a number or a dict holding {metric!r}", f"<a dict with {name!r}: None>")
        returned = returned[name]
    if returned is None:
        if metric in report.last_metrics:
            return report.last_metrics[metric]
        raise LoopContractError(
            path, "loop", f"a loop returning the objective's value, or reporting {metric!r} through trial.epoch(...)", "<None, and no trial.epoch(...)>"
        )
    if not isinstance(returned, (str, bytes, bool)) and not _boolean(returned):  # True is no loss: `return ok` is a slip
        try:
            return float(returned)
        except (TypeError, ValueError):
            pass
    shown = " ".join(repr(returned).split())  # one line, whatever the repr (a model's spans many)
    raise LoopContractError(path, "loop", f"a loop returning a number (the objective's {metric!r})", f"<{type(returned).__name__} {shown:.60}>")


def _boolean(value: Any) -> bool:
    """A NumPy or PyTorch boolean (``np.True_``, named ``bool`` in NumPy 2 and ``bool_`` before; a 0-d
    boolean array; a ``torch.bool`` tensor), which float() takes: ``return loss < best`` is a slip."""
    return (type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_")) or str(getattr(value, "dtype", "")) in ("bool", "torch.bool")
