"""The Optuna objective: one trial = suggest a run, build the task, train, report, record.

Outcomes, each recorded the same way in Optuna (state, user attrs) and MLflow (tags, run status):
- COMPLETE: the objective metric after the last epoch is the trial's value;
- PRUNED, diverged: the divergence guard fired; ``autolr.prune_reason`` and ``autolr.divergence_step``;
- PRUNED, curve: the pruner judged the validation curve hopeless at some epoch;
- FAIL: anything raised (the study goes on); KILLED in MLflow when interrupted.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import optuna

from autolr import keys
from autolr.config import StudyConfig
from autolr.errors import StudyFileError
from autolr.guard import Diverged, DivergenceGuard
from autolr.hparams import RunConfig
from autolr.space import LrBounds, suggest_run
from autolr.tasks import build_task
from autolr.trainer import Trainer, TrainerCallback, pick_device

__all__ = ["Objective", "resolve_metric"]

if TYPE_CHECKING:  # mlflow loads only where tracking is on
    from autolr.tracking import Tracker, TrialRun

logger = logging.getLogger(__name__)



def resolve_metric(config: StudyConfig, task) -> str:
    """The logged name of the objective metric: ``accuracy`` and ``val_accuracy`` both work.

    Raises:
        StudyFileError: the task logs no such metric.
    """
    available = ["val_loss", *(keys.val_metric(m) for m in task.metrics)]
    if keys.val_metric(config.metric) in available:
        return keys.val_metric(config.metric)
    raise StudyFileError(config.path, "objective.metric", f"one of {available} (from task {config.task})", config.metric)


class _Report(TrainerCallback):
    """Trainer -> Optuna (curve pruning) and MLflow (batched points)."""

    def __init__(self, trial: optuna.Trial, run: TrialRun | None, metric: str, curve_pruning: bool) -> None:
        self.trial = trial
        self.run = run
        self.metric = metric
        self.curve_pruning = curve_pruning
        self.first_loss: float | None = None  # mean training loss of the first window
        self.smoothed_loss: float | None = None  # EMA (0.9) of the training loss since

    def on_steps(self, first_step: int, values: Mapping[str, Sequence[float]]) -> None:
        if self.run is not None:
            self.run.log_steps(first_step, values)
        losses = [v for v in values.get("train_loss", ()) if math.isfinite(v)]
        if losses and self.first_loss is None:
            self.first_loss = sum(losses) / len(losses)
        for v in losses:
            self.smoothed_loss = v if self.smoothed_loss is None else 0.9 * self.smoothed_loss + 0.1 * v

    def record_loss_ratio(self) -> None:
        """Where training ended against where it started, as a trial attr (a run can get worse without
        diverging); nothing when no finite loss was seen."""
        if self.first_loss is not None and self.smoothed_loss is not None and self.first_loss > 0:
            self.trial.set_user_attr(keys.LOSS_RATIO, self.smoothed_loss / self.first_loss)

    def on_layer_stats(self, step: int, stats: Mapping[str, float]) -> None:
        if self.run is not None:
            self.run.log_metrics(step, stats)

    def on_epoch_end(self, epoch: int, step: int, metrics: Mapping[str, float]) -> None:
        if self.run is not None:
            self.run.log_metrics(epoch, metrics)
            self.run.flush()
        value = metrics[self.metric]
        self.trial.report(value, epoch)
        if self.curve_pruning and self.trial.should_prune():
            self.trial.set_user_attr(keys.STEPS, step)
            raise optuna.TrialPruned(f"curve: {self.metric} {value:.4g} at epoch {epoch} fell behind earlier trials")


class Objective:
    """Callable objective for ``study.optimize``; picklable, so worker processes can rebuild it."""

    def __init__(self, config: StudyConfig, lr_bounds: LrBounds, *, tracker: Tracker | None, parent_run_id: str | None) -> None:
        self.config = config
        self.lr_bounds = dict(lr_bounds)
        self.tracker = tracker
        self.parent_run_id = parent_run_id

    def __call__(self, trial: optuna.Trial) -> float:
        cfg = self.config
        run_config = suggest_run(trial, cfg.search, self.lr_bounds, grid=cfg.sampler == "grid")
        flat = run_config.flat()
        trial.set_user_attr(keys.PARAMS, flat)
        run = self.tracker.trial_run(self.parent_run_id, trial.number, flat) if self.tracker else None
        try:
            if run is None:
                return self._train(trial, run_config, None)
            with run:
                return self._train(trial, run_config, run)
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            trial.set_user_attr(keys.ERROR, f"{type(exc).__name__}: {exc}"[:500])
            raise

    def _train(self, trial: optuna.Trial, run_config: RunConfig, run: TrialRun | None) -> float:
        cfg = self.config
        task = build_task(cfg.task, cfg.task_args, seed=cfg.seed)
        metric = resolve_metric(cfg, task)
        trainer = Trainer(
            epochs=cfg.train.epochs,
            batch_size=cfg.train.batch_size,
            device=pick_device(cfg.train.device),
            guard=DivergenceGuard(cfg.pruning.loss_factor) if cfg.pruning.divergence else None,
            callbacks=[report := _Report(trial, run, metric, cfg.pruning.curve != "none")],
            layer_stats_every=cfg.tracking.layer_stats_every if run is not None else 0,
            grad_clip=cfg.train.grad_clip,
            monitor=metric,
            seed=cfg.seed,
        )
        total_steps = cfg.train.epochs * trainer.steps_per_epoch(task)
        optimizer = run_config.build_optimizer(task.model.parameters())
        mode = "min" if cfg.direction == "minimize" else "max"
        scheduler = run_config.build_scheduler(optimizer, total_steps, mode=mode)
        try:
            result = trainer.fit(task, optimizer, scheduler)
        except Diverged as exc:
            self._record_prune(trial, run, exc.reason, divergence_step=exc.step, diverged=True)
            raise optuna.TrialPruned(exc.reason) from None
        except optuna.TrialPruned as exc:
            report.record_loss_ratio()
            self._record_prune(trial, run, str(exc), divergence_step=None, diverged=False)
            raise
        trial.set_user_attr(keys.STEPS, result.steps)
        report.record_loss_ratio()
        value = result.final[metric]
        if not math.isfinite(value):  # only reachable with the guard off: still divergence, not a bug
            reason = f"diverged: {metric} {value} after the last epoch"
            self._record_prune(trial, run, reason, divergence_step=result.steps - 1, diverged=True)
            raise optuna.TrialPruned(reason)
        if run is not None:
            run.end("COMPLETE", {keys.VALUE: value})
        return value

    def _record_prune(self, trial, run, reason: str, *, divergence_step: int | None, diverged: bool) -> None:
        trial.set_user_attr(keys.PRUNE_REASON, reason)
        trial.set_user_attr(keys.DIVERGED, diverged)
        if divergence_step is not None:
            trial.set_user_attr(keys.DIVERGENCE_STEP, divergence_step)
            trial.set_user_attr(keys.STEPS, divergence_step + 1)
        if run is not None:
            tags = {keys.PRUNE_REASON: reason}
            if divergence_step is not None:
                tags[keys.DIVERGENCE_STEP] = divergence_step
            run.end("PRUNED", tags)
