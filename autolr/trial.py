"""One trial as its training code sees it: the report to Optuna and MLflow, and ``autolr.Trial``.

:class:`TrialReport` is the watcher every trial trains under, whoever runs the loop: per-step points
and per-layer statistics to MLflow, each epoch's metrics to MLflow and to Optuna's pruner.

:class:`Trial` is what ``loop:`` hands a user's own training loop: the suggested configuration
(``params``), its optimizer and per-step scheduler, and two calls that give the loop everything
autolr's own trainer has (the divergence guard, per-step and per-layer tracking, curve pruning)::

    def train(trial):
        model = MyModel()
        optimizer = trial.build_optimizer(model)              # or model.parameters()
        scheduler = trial.build_scheduler(optimizer, total_steps=epochs * len(loader))
        for epoch in range(epochs):
            for batch in loader:
                optimizer.zero_grad(); loss = my_loss(model, batch); loss.backward()
                trial.step(loss)          # after backward: guard, train_loss, lr, grad_norm
                optimizer.step(); scheduler.step()
            trial.epoch({"val_loss": validate(model)})  # curve pruning, per-epoch tracking
        return validate(model)

``step`` and ``epoch`` raise :class:`TrialPruned` (an ``optuna.TrialPruned``) when the run diverged or its
curve fell behind; the loop lets it propagate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import optuna
import torch

from autolr import keys
from autolr.grads import grad_norms
from autolr.guard import Diverged, DivergenceGuard
from autolr.hparams import RunConfig
from autolr.progress import NullProgress, run_label
from autolr.scheduler import StepScheduler
from autolr.stability import EpochLosses
from autolr.steps import StepRecorder
from autolr.trainer import TrainerCallback

if TYPE_CHECKING:
    from autolr.tracking import NullTrialRun, TrialRun

__all__ = ["Pruned", "Trial", "TrialPruned", "TrialReport"]

SCHEDULE_UNDERRUN = 0.9  # a complete loop that ran fewer than this share of its schedule's steps is told so
_GIVE_STEPS = "give the schedule (trial.build_scheduler, or an integration's optimizers(...)) the loop's number of optimizer steps"


class TrialPruned(optuna.TrialPruned):
    """The trial stops here: it diverged (``diverged``, at ``step``) or its curve fell behind.
    Raised by :meth:`Trial.step` and :meth:`Trial.epoch`; a loop lets it propagate."""

    def __init__(self, reason: str, *, step: int | None = None, diverged: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.step, self.diverged = reason, step, diverged


Pruned = TrialPruned  # the short name used inside autolr


class TrialReport(TrainerCallback):
    """Training -> Optuna (curve pruning) and MLflow (batched points)."""

    def __init__(
        self,
        trial: optuna.Trial,
        run: TrialRun | NullTrialRun,
        metric: str,
        curve_pruning: bool,
        *,
        progress: NullProgress | None = None,
        epochs: int | None = None,
    ) -> None:
        self.trial = trial
        self.progress = progress or NullProgress()
        self.epochs = epochs
        self.total_steps: int | None = None
        self.steps_per_epoch: int | None = None
        self.run = run
        self.metric = metric
        self.curve_pruning = curve_pruning
        self.first_loss: float | None = None  # mean training loss of the first window
        self.smoothed_loss: float | None = None  # EMA (0.9) of the training loss since
        self.epoch_losses = EpochLosses()  # the lowest and the last epoch means, for the stability rule
        self.last_metrics: dict[str, float] = {}
        self.last_epochs: list[int] = []
        self._name: str | None = None  # on the progress bar (_label)

    def on_train_start(self, total_steps: int, steps_per_epoch: int) -> None:
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch

    def on_steps(self, first_step: int, values: Mapping[str, Sequence[float]]) -> None:
        self.run.log_steps(first_step, values)
        losses = [v for v in values.get("train_loss", ()) if math.isfinite(v)]
        if losses and self.first_loss is None:
            self.first_loss = sum(losses) / len(losses)
        for v in losses:
            self.smoothed_loss = v if self.smoothed_loss is None else 0.9 * self.smoothed_loss + 0.1 * v
        self.epoch_losses.add(losses)
        step = first_step + len(values.get("train_loss", ()))
        if self._near_the_end(first_step, step):
            self.run.flush()
        epoch = (step - 1) // self.steps_per_epoch + 1 if self.steps_per_epoch else len(self.last_epochs) + 1
        self.progress.steps(self._label(), step, self.total_steps, epoch, self.epochs, losses[-1] if losses else None)

    def _label(self) -> str:
        """The running trial on the progress bar (:func:`autolr.progress.run_label`). Made once: an
        Optuna trial's user attrs are a deep copy at each read."""
        if self._name is None:
            self._name = run_label(self.trial.number, self.trial.user_attrs)
        return self._name

    def _near_the_end(self, first_step: int, step: int) -> bool:
        """Whether the window ``[first_step, step)`` reaches the last epoch's first step or the last
        step: the points up to there leave at once, so the writer commits them while the last epoch and
        the final validation run, and what is left to write once the trial ends is only the last
        validation's metrics and the run's end."""
        if self.total_steps is None:
            return False
        marks = (self.total_steps - (self.steps_per_epoch or 0), self.total_steps)
        return any(first_step < mark <= step for mark in marks)

    def record_loss_ratio(self) -> None:
        """Where training ended, and the lowest it went, against where it started, as trial attrs (a
        run can get worse without diverging: :func:`autolr.stability.is_stable`); nothing when no
        finite loss was seen."""
        if self.first_loss is not None and self.smoothed_loss is not None and self.first_loss > 0:
            self.trial.set_user_attr(keys.LOSS_RATIO, self.smoothed_loss / self.first_loss)
            low, last = self.epoch_losses.low, self.epoch_losses.last
            if low is not None and last is not None and math.isfinite(low) and math.isfinite(last):  # an epoch long enough to read ended
                self.trial.set_user_attr(keys.LOW_LOSS_RATIO, low / self.first_loss)
                self.trial.set_user_attr(keys.LAST_LOSS_RATIO, last / self.first_loss)

    def on_layer_stats(self, step: int, stats: Mapping[str, float]) -> None:
        self.run.log_metrics(step, stats)

    def on_epoch_end(self, epoch: int, step: int, metrics: Mapping[str, float]) -> None:
        self.epoch_losses.end_epoch()
        self.last_metrics = dict(metrics)
        self.last_epochs.append(epoch)
        self.run.log_metrics(epoch, metrics)
        value = metrics[self.metric]
        self.trial.report(value, epoch)
        if self.curve_pruning and self.trial.should_prune():
            self.trial.set_user_attr(keys.STEPS, step)
            raise Pruned(f"curve: {self.metric} {value:.4g} at epoch {epoch} fell behind earlier trials")


class Trial:
    """One trial of a study, handed to a user's own training loop (``loop:`` in the study file).

    Attributes:
        number: the Optuna trial number.
        params: the flat configuration under test (``optimizer``, ``lr``, ``schedule``, ``warmup`` and
            their parameters), as exported.
        run_config: the same as a :class:`~autolr.hparams.RunConfig`.
        metric: the objective's metric name (``val_loss``, ``val_accuracy``, ...).
        train: the study file's ``train:`` settings (``epochs``, ``batch_size``, ``max_steps``, ...),
            for a loop that takes its budget from the study file.
        seed: the seed autolr seeded ``torch``, ``random`` and NumPy with before calling the loop:
            the study's, a confirmation run's fresh one, or the trial's own with
            ``train.seed_per_trial``. A framework that reseeds by itself must be handed it
            (``TrainingArguments(seed=trial.seed)``), or every run trains on the same batches.
    """

    def __init__(
        self,
        trial: optuna.Trial,
        run_config: RunConfig,
        report: TrialReport,
        *,
        guard: DivergenceGuard | None,
        layer_stats_every: int = 0,
        check_every: int = 4,
        direction: str = "minimize",
        train: Any = None,
        seed: int | None = None,
    ) -> None:
        self.number = trial.number
        self.train = train
        self.seed = seed
        self.params: dict[str, Any] = run_config.flat()
        self.run_config = run_config
        self.metric = report.metric
        self._report, self._guard = report, guard
        self._layer_stats_every, self._check_every = layer_stats_every, check_every
        self._mode = "min" if direction == "minimize" else "max"
        self._optimizer: torch.optim.Optimizer | None = None
        self._named: list[tuple[str, torch.nn.Parameter]] = []
        self._recorder: StepRecorder | None = None
        self._epoch = 0
        self._scheduler: StepScheduler | None = None
        self._reports_seen = 0  # the scheduler's report() calls, as autolr made them (more: the loop reports itself)
        self._plateau_pending: float | None = None  # the last epoch's metric, for a plateau schedule
        self._seen = _Seen()  # what the loop did to the model, for training_fault()

    def build_optimizer(self, parameters: torch.nn.Module | Iterable[Any]) -> torch.optim.Optimizer:
        """The trial's optimizer at its peak rate over ``parameters``: a model (per-layer statistics get
        its parameter names), ``model.parameters()``, ``(name, parameter)`` pairs or param groups."""
        named, plain = _named_parameters(parameters)
        self._named = named
        self._optimizer = self.run_config.build_optimizer(plain)
        self._optimizer.register_step_post_hook(self._seen.optimizer_stepped)  # a wrapper's step (Lightning's, accelerate's) calls it too
        return self._optimizer

    def build_scheduler(self, optimizer: torch.optim.Optimizer, total_steps: int) -> StepScheduler:
        """The trial's per-step schedule over ``total_steps`` optimizer steps: ``step()`` it after every
        ``optimizer.step()``. A ``plateau`` schedule (the one built last) gets the objective's metric of
        the last :meth:`epoch` before the next step, once, so a plain loop trains the rate autolr's
        trainer would; once the loop calls ``scheduler.report(metric)`` itself (before or after
        ``trial.epoch``), the schedule is the loop's to feed."""
        self._report.trial.set_user_attr(keys.STEPS, int(total_steps))
        self._report.total_steps = int(total_steps)
        self._scheduler = self.run_config.build_scheduler(optimizer, total_steps, mode=self._mode)
        self._reports_seen, self._plateau_pending = 0, None
        return self._scheduler

    def step(self, loss: torch.Tensor | float) -> None:
        """Record one optimisation step, after ``loss.backward()`` and before ``optimizer.step()``.

        Raises:
            Pruned: the run diverged (its loss or gradient norm is not finite, or blew up); checked
                once per window of a few steps, so the loop never waits on the GPU step by step.
        """
        recorder = self._recorder or self._start()
        if self._plateau_pending is not None:
            self._report_plateau()
        params = [p for _, p in self._named]
        norms = grad_norms(params)
        device = norms[0].device if norms else (loss.device if isinstance(loss, torch.Tensor) else torch.device("cpu"))
        total = torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros((), device=device)
        loss_t = loss.detach().reshape(()) if isinstance(loss, torch.Tensor) else torch.tensor(float(loss), device=device)
        recorder.before_update()
        try:
            recorder.record(loss_t, self._optimizer.param_groups[0]["lr"], total)
        except Diverged as exc:
            raise self._diverged(exc) from None

    def epoch(self, metrics: Mapping[str, float]) -> None:
        """Report an epoch's validation metrics (``{"val_loss": ...}``); they are logged per epoch and
        the objective's metric goes to Optuna's pruner.

        Raises:
            Pruned: the run diverged, or its curve fell behind earlier trials.
        """
        self._epoch += 1
        values = {name: float(value) for name, value in metrics.items()}
        self.finish()  # the epoch's last window of steps
        metric = keys.metric_name_in(values, self.metric)
        if metric is None:
            raise KeyError(f"trial.epoch: expected the objective's metric {self.metric!r} among the metrics, got {sorted(values)}")
        if self._guard is not None and not math.isfinite(values[metric]):
            raise Pruned(f"diverged: {metric} {values[metric]} after epoch {self._epoch}", step=self.steps - 1, diverged=True)
        if self._scheduler is not None and self._scheduler.plateau is not None and not self._loop_reports():
            self._plateau_pending = values[metric]  # given at the next step, unless the loop reports by then
        self._report.on_epoch_end(self._epoch, self.steps, {**values, self.metric: values[metric]})

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        """The optimizer :meth:`build_optimizer` built (None before), for adapters that check it is the one stepped."""
        return self._optimizer

    @property
    def steps(self) -> int:
        """Optimisation steps recorded so far."""
        return self._recorder.step if self._recorder is not None else 0

    def finish(self) -> None:
        """The buffered window of steps, judged and recorded (at each epoch, and when the loop ends)."""
        if self._recorder is not None:
            try:
                self._recorder.flush()
            except Diverged as exc:
                raise self._diverged(exc) from None

    @property
    def schedule_steps(self) -> int | None:
        """The optimizer steps the schedule was built over (None: no schedule built)."""
        return self._scheduler.total_steps if self._scheduler is not None else None

    def schedule_mismatch(self) -> str | None:
        """Why the schedule and the loop's steps disagree, or None when they agree: the loop ran more
        ``trial.step`` calls than the ``total_steps`` it built the schedule for (the rate sat at the
        schedule's last value for the rest), or under :data:`SCHEDULE_UNDERRUN` of them (the rate
        never reached the schedule's end: a cosine that barely decayed). Either way the curve the
        trial trained is not the one its configuration names, and the export holds the schedule's
        ``total_steps``."""
        if self._scheduler is None:
            return None
        if self.run_config.schedule in ("constant", "plateau") and not self.run_config.warmup:
            return None  # a rate that does not follow the step count: total_steps changes nothing
        total, ran = self._scheduler.total_steps, self.steps
        if ran > total:
            return (f"the schedule was built for total_steps={total} and the loop ran {ran} steps: its rate held the schedule's "
                    f"last value for the last {ran - total}; {_GIVE_STEPS}")  # fmt: skip
        if 0 < ran < SCHEDULE_UNDERRUN * total and self.run_config.schedule not in ("constant", "plateau"):  # a warmup alone ends early on
            return (f"the schedule was built for total_steps={total} and the loop ran {ran} steps ({ran / total:.0%}): its rate never "
                    f"reached the schedule's end; {_GIVE_STEPS} (a loop that stops early by design, on a patience or a time budget, trains what it exports only as far as it ran)")  # fmt: skip
        return None

    def training_fault(self) -> str | None:
        """What a loop that ran to its end left out, or None: :meth:`step` never called (no divergence
        guard, no per-step curves, no stability reading); or it trained nothing: no gradient reached
        the parameters the optimizer was built over in any step (``loss.backward()`` missing, or the
        optimizer built over another model's parameters), or the optimizer was never stepped. Every
        trial of such a loop ends where it started and reads the same, whatever its configuration,
        so the study would pick a winner by chance."""
        if self.steps == 0:
            return ("the loop never called trial.step(loss): a diverging trial runs to its end instead of stopping within a few steps, "
                    "and no train_loss, lr or grad_norm curve is recorded; call it after loss.backward(), before optimizer.step()")  # fmt: skip
        if self._optimizer is None:
            return None
        if not self._seen.gradient:
            return (f"no gradient reached the parameters given to trial.build_optimizer in {self.steps} trial.step calls (each None or zero): "
                    "call loss.backward() before trial.step(loss), with the optimizer built over the model the loss comes from")  # fmt: skip
        if not self._seen.optimizer_steps:
            return (f"the optimizer trial.build_optimizer built never stepped in {self.steps} trial.step calls: "
                    "call optimizer.step() after trial.step(loss)")  # fmt: skip
        return None

    def _start(self) -> StepRecorder:
        if self._optimizer is None:
            raise RuntimeError("trial.step: build the optimizer with trial.build_optimizer(model) first")
        names = [name for name, _ in self._named]
        if self._named and self._named[0][1].device.type == "cuda":  # as autolr's trainer: no GPU wait step by step
            self._check_every = max(self._check_every, 16)
        self._recorder = StepRecorder([p for _, p in self._named], names, guard=self._guard, watchers=[self._report, self._seen],
                                      check_every=self._check_every, layer_stats_every=self._layer_stats_every,
                                      recorded_after_update=False)  # fmt: skip
        return self._recorder

    def _loop_reports(self) -> bool:
        """Whether the loop has called ``scheduler.report`` itself: the schedule is then its to feed."""
        return self._scheduler.reports != self._reports_seen

    def _report_plateau(self) -> None:
        """The last epoch's metric to the plateau schedule, unless the loop reports it itself."""
        value, self._plateau_pending = self._plateau_pending, None
        if not self._loop_reports():
            self._scheduler.report(value)
            self._reports_seen = self._scheduler.reports

    def _diverged(self, exc: Diverged) -> Pruned:
        return Pruned(exc.reason, step=exc.step, diverged=True)


class _Seen(TrainerCallback):
    """Whether any step of a loop had a gradient, and how often its optimizer stepped: read from the
    values each window already brings to the host, so watching costs no device op."""

    def __init__(self) -> None:
        self.gradient = False
        self.optimizer_steps = 0

    def on_steps(self, first_step: int, values: Mapping[str, Sequence[float]]) -> None:
        self.gradient = self.gradient or any(v != 0.0 for v in values.get("grad_norm", ()))  # NaN and inf count: a gradient was there

    def optimizer_stepped(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.optimizer_steps += 1


def _named_parameters(parameters: Any) -> tuple[list[tuple[str, torch.nn.Parameter]], Any]:
    """``(named trainable parameters, what the optimizer takes)`` from a model, parameters, pairs or groups."""
    if isinstance(parameters, torch.nn.Module):
        named = [(n, p) for n, p in parameters.named_parameters() if p.requires_grad]
        return named, [p for _, p in named]
    items = list(parameters)
    if items and isinstance(items[0], dict):  # param groups: their params listed once (a generator is used up by naming)
        items = [dict(group, params=list(group["params"])) for group in items]
        named = [(f"group{g}.{i}", p) for g, group in enumerate(items) for i, p in enumerate(group["params"]) if p.requires_grad]
        return named, items
    if items and isinstance(items[0], tuple):
        named = [(n, p) for n, p in items if p.requires_grad]
        return named, [p for _, p in named]
    return [(f"param{i}", p) for i, p in enumerate(items) if p.requires_grad], items
