"""Running a study: sampler, workers, resume to the target, the summary (the Python API's ``tune``).

``trials`` is the study's total target of finished (COMPLETE or PRUNED) trials: every invocation
counts what the storage already holds and runs only the rest, so re-running a command resumes it.
Several worker processes (``jobs``, :mod:`autolr.workers`) share one storage; trials are claimed and
run to the exact target by :mod:`autolr.driver`, and a killed process's trial is failed and run again
(:func:`autolr.store.fail_stale_trials`) while the study goes on. Where the study is stored and how it is read back is
:mod:`autolr.store`'s; this module drives it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autolr import keys, store
from autolr.claim import free_slot, take_slot
from autolr.config import DEFAULT_TRACKING_URI, UNSTEERED_SAMPLERS, StudyConfig, load_study, with_overrides
from autolr.confirm import confirmation_pending, run_confirmation
from autolr.driver import grid_exhausted, run_trials
from autolr.objective import Objective
from autolr.optimizers import OPTIMIZERS
from autolr.preflight import check_crosses_processes, preflight
from autolr.progress import NullProgress, Progress, run_label
from autolr.pruning import make_pruner
from autolr.result import TuneResult, study_config, summarize
from autolr.retry import StorageFull, StorageUnavailable
from autolr.sampler import make_sampler
from autolr.space import LrBounds, grid_search_space
from autolr.sweep import sweep_at
from autolr.tracking import discard_warm_writers, open_tracker, prestart_writer
from autolr.trainer import worker_device
from autolr.workers import TORCH_THREADS, refuse_while_spawning, run_workers, sigterm_interrupts, torch_threads

__all__ = ["TuneResult", "export_best", "open_study", "tune"]

if TYPE_CHECKING:
    from autolr.tracking import NullTracker, Tracker

logger = logging.getLogger(__name__)


def open_study(
    config: StudyConfig, storage: str | None = None, lr_bounds: LrBounds | None = None, *, worker: int = 0, parallel: bool = False, invocation: int = 0
) -> optuna.Study:
    """Create (or load) the study in its storage, with the sampler and pruner of the study file.

    The sampler's seed mixes the study's seed with the number of trials already stored, the worker's
    index and the invocation's slot (:func:`autolr.claim.take_slot`, 0 alone): a study run by one
    process is reproducible, while a resumed study, a second worker or a second machine started at the
    same moment does not replay the random start-up proposals already tried (identical, since training
    is seeded).
    A grid shuffles its points with the seed of the study's first invocation (stored): its trials are
    indices into that order, which every resume and worker must share, whatever ``--seed`` says now.
    """
    url = storage or store.default_storage_url(config)
    study = store.create_or_load(config, url, sampler=optuna.samplers.RandomSampler(), pruner=make_pruner(config))
    seed = config.seed + 1_000_003 * len(study.get_trials(deepcopy=False)) + 7_919 * worker + 104_729 * invocation
    grid_seed = None
    if config.sampler == "grid":  # the points are indices into the order this seed shuffles: kept from the first invocation
        grid_seed = study.user_attrs.get(keys.GRID_SEED)
        if grid_seed is None:
            grid_seed = config.seed  # a grid study's first invocation (or one of an autolr before the key, which shuffled so)
            study.set_user_attr(keys.GRID_SEED, grid_seed)
    study.sampler = _sampler(config, lr_bounds, seed, parallel=parallel, grid_seed=grid_seed)
    return study


def _sampler(config: StudyConfig, lr_bounds: LrBounds | None, seed: int, *, parallel: bool, grid_seed: int | None = None) -> optuna.samplers.BaseSampler:
    if lr_bounds is None and not config.search.lr.auto:
        lr_bounds = fixed_lr_bounds(config)
    if config.sampler == "grid" and lr_bounds is None:  # reading only: the grid is not known yet
        return optuna.samplers.RandomSampler(seed=seed)
    grid = grid_search_space(config.search, lr_bounds) if config.sampler == "grid" else None
    at = sweep_at(config.trials, len(config.search.schedules))
    sweep = (at, config.trials) if at is not None else None
    return make_sampler(
        config.sampler, seed=seed % 2**32, grid_space=grid, ceiling=_ceiling(config), parallel=parallel, sweep=sweep,
        grid_seed=None if grid_seed is None else grid_seed % 2**32, lr_bounds=lr_bounds,
    )  # fmt: skip


def _ceiling(config: StudyConfig) -> bool:
    """Whether the study's sampler keeps off diverging rates (:class:`autolr.sampler.CeilingSampler`):
    asked for, with the divergence guard on, and never for random and grid (:func:`make_sampler`)."""
    return config.sampler_ceiling and config.pruning.divergence and config.sampler not in UNSTEERED_SAMPLERS


def fixed_lr_bounds(config: StudyConfig) -> LrBounds:
    """Each optimizer's searched lr range: the study file's, or the optimizer's own (Prodigy's lr
    scales its own step-size estimate: searched around 1)."""
    return {name: OPTIMIZERS[name].lr_range or (config.search.lr.low, config.search.lr.high) for name in config.search.optimizers}


@dataclasses.dataclass(frozen=True)
class _Plan:
    """One invocation's run of a study, as every process running its trials needs it (picklable)."""

    config: StudyConfig
    storage_url: str
    tracking_uri: str | None
    jobs: int
    timeout_s: float | None
    invocation: int = 0  # this invocation's slot among those running the study (its samplers' seeds mix it in)

    @property
    def parallel(self) -> bool:
        return self.jobs > 1


def _worker(plan: _Plan, lr_bounds: LrBounds, parent_run_id: str | None, index: int) -> None:
    """One of ``--jobs`` worker processes: its own study handle and tracker, the shared target."""
    import torch

    torch.set_num_threads(TORCH_THREADS)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    device = worker_device(plan.config.train.device, index)
    if device.type == "cuda":  # this worker's "cuda" is its own GPU: worker i on cuda:(i % GPUs)
        torch.cuda.set_device(device)
    prestart_writer(plan.tracking_uri)  # the writer's imports overlap the preflight's
    preflight(plan.config)  # the worker's imports and first build (seconds) before its first trial's clock, as in the main process
    study = open_study(plan.config, plan.storage_url, lr_bounds, worker=index, parallel=True, invocation=plan.invocation)
    tracker = open_tracker(plan.tracking_uri, plan.config.name)
    tracker.study_uid = store.study_uid(study)
    tracker.open_writer()  # its store opened before the first trial, not during the other workers' trials
    deadline = time.monotonic() + plan.timeout_s if plan.timeout_s else None
    objective = Objective(plan.config, lr_bounds, tracker=tracker, parent_run_id=parent_run_id)
    try:
        run_trials(study, objective, url=plan.storage_url, target=plan.config.trials, deadline=deadline, grid=plan.config.sampler == "grid")
    finally:
        tracker.close()  # every trial run written and closed before the worker exits


def tune(
    study: str | Path | StudyConfig,
    *,
    trials: int | None = None,
    timeout_s: float | None = None,
    jobs: int = 1,
    storage: str | None = None,
    tracking_uri: str | None = DEFAULT_TRACKING_URI,
    seed: int | None = None,
    on_trial: Callable[[FrozenTrial], None] | None = None,
    task: Callable[..., Any] | None = None,
    loop: Callable[..., Any] | None = None,
    progress: bool = True,
    extend_space: bool = False,
) -> TuneResult:
    """Run (or resume) a study until it holds ``trials`` finished trials (the study file's by default).

    Args:
        study: a study file path or a loaded :class:`StudyConfig`.
        task: a task factory (``factory(**task_args) -> autolr.Task``), e.g. defined in a notebook;
            stands in for the study file's ``task:``.
        loop: a training loop (``loop(trial: autolr.Trial) -> value``); stands in for ``loop:``.
        trials: overrides the study file's target.
        timeout_s: stop starting new trials after this many seconds.
        jobs: worker processes sharing the storage (1: run in this process).
        storage: any Optuna storage URL; default ``sqlite:///`` beside the study file.
        tracking_uri: MLflow tracking URI; None turns tracking off.
        seed: overrides the study file's seed.
        on_trial: called with each finished trial (in this process only).
        progress: a progress bar on stderr (a widget in a notebook): trials finished, and the running
            trial's epoch, step and loss.
        extend_space: let the stored study's search space grow to the file's wider one (a study file
            that differs in anything else is refused: see :mod:`autolr.identity`).
    """
    refuse_while_spawning()  # a script without a __main__ guard, imported again by a worker it spawned
    with _quiet_libraries(), sigterm_interrupts(), store.reusing_storages():
        return _tune(study, trials, timeout_s, jobs, storage, tracking_uri, seed, on_trial, task, loop, progress, extend_space)


@contextlib.contextmanager
def _quiet_libraries():
    """Optuna's line per trial and MLflow's database notices would bury the progress bar and the
    user's own output (a notebook prints them all); put back as they were afterwards."""
    loggers = {name: logging.getLogger(name) for name in ("optuna", "alembic", "mlflow")}
    before = {name: lg.level for name, lg in loggers.items()}
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for lg in loggers.values():
        lg.setLevel(max(lg.level, logging.WARNING))
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)
        for name, lg in loggers.items():
            lg.setLevel(before[name])


def _nothing_to_train(config: StudyConfig, url: str) -> bool:
    """The study is stored, holds its target and its confirmation is over: this invocation trains
    nothing, so it need not build the task (seconds: its imports, its data, one step) to say so."""
    if not store.exists(config.name, url):
        return False
    study = store.load(config, url, identity=False)  # checked already (check_identity), --extend-space included
    return store.n_finished(study) >= config.trials and not confirmation_pending(config, study, url)


def _tune(study, trials, timeout_s, jobs, storage, tracking_uri, seed, on_trial, task, loop, progress, extend_space) -> TuneResult:
    config = with_overrides(study_config(study, task=task, loop=loop), trials=trials, seed=seed, extend_space=extend_space)
    url = storage or store.default_storage_url(config)
    check_crosses_processes(config, jobs)
    config = store.check_identity(config, url)  # another study's file: refused before its code runs; choices in the stored order
    plan = _Plan(config, url, tracking_uri, jobs, timeout_s)
    prestart_writer(tracking_uri)  # its imports overlap the preflight; it opens the store only once given work
    try:
        if not _nothing_to_train(config, plan.storage_url):  # a study already done runs no user code (it only delivers MLflow's spool)
            preflight(config)  # before any store is created: bad input writes nothing
    except BaseException:
        discard_warm_writers()
        raise
    tracker = open_tracker(tracking_uri, config.name)
    tracker.check_reachable()
    tracker.open_writer(timeout_s=0)  # the input passed: the warm writer opens its store meanwhile
    tracker.write_unsent()

    opt_study = open_study(config, plan.storage_url)
    opt_study.set_user_attr(keys.CODE, {"key": config.code_key, "label": config.code_label})  # export reads it, callables included
    tracker.study_uid = store.study_uid(opt_study)
    _close_orphan_runs(opt_study, tracker, config.trials)

    parent_run_id = None
    done = store.n_finished(opt_study)
    pending = done < config.trials or confirmation_pending(config, opt_study, plan.storage_url)
    bar = Progress(config.trials, initial=done) if progress and pending else NullProgress()
    watch = _Watch(bar, on_trial)
    slot = None
    try:
        if pending:
            slot = take_slot(opt_study, plan.storage_url)
            plan = dataclasses.replace(plan, invocation=slot)
            parent_run_id = _run(plan, opt_study, tracker, watch)
    finally:
        if slot is not None and not isinstance(sys.exc_info()[1], (StorageUnavailable, StorageFull)):  # a storage that is gone: not waited on again
            free_slot(opt_study, plan.storage_url, slot)
        bar.close()
        tracker.close()  # stops the MLflow writer once every trial run is written and closed
    result = summarize(config, plan.storage_url, tracking_uri, parent_run_id, study=opt_study)
    wall = time.time() - watch.first_start if watch.first_start is not None else 0.0
    return dataclasses.replace(
        result, trial_seconds=watch.trial_seconds, wall_seconds=wall, jobs=watch.jobs, processes=len(watch.owners), stopped=watch.stopped
    )


@dataclasses.dataclass
class _Watch:
    """Who hears of this invocation's progress: the bar, the caller's ``on_trial``, the clock."""

    bar: NullProgress
    on_trial: Callable[[FrozenTrial], None] | None
    first_start: float | None = None  # time.time() of this invocation's first trial start
    trial_seconds: float = 0.0
    owners: set[Any] = dataclasses.field(default_factory=set)  # the processes that trained them (machine, pid)
    jobs: int = 1  # the processes started to train them: --jobs N when workers were spawned
    stopped: str = ""  # why the search ended short of its target: "grid" (every point ran) or "timeout"

    def _clock(self, trial: FrozenTrial) -> None:
        if trial.datetime_start is None or trial.datetime_complete is None:
            return
        record = trial.user_attrs.get(keys.OWNER)
        if isinstance(record, dict):
            self.owners.add((record.get("machine"), record.get("pid")))
        start = trial.datetime_start.timestamp()
        self.first_start = start if self.first_start is None else min(self.first_start, start)
        self.trial_seconds += (trial.datetime_complete - trial.datetime_start).total_seconds()

    def confirmed(self, trial: FrozenTrial) -> None:
        self._clock(trial)
        value = "" if trial.value is None else f" {trial.value:.4g}"
        self.bar.note(f"{run_label(trial.number, trial.user_attrs)}: {trial.state.name}{value}")

    def __call__(self, trial: FrozenTrial) -> None:
        self._clock(trial)
        row = store.trial_row(trial)
        value = "" if row["value"] is None else f" {row['value']:.4g}"
        self.bar.trial_finished(f"#{row['trial']} {row['state']}{value}", counted=trial.state in store.FINISHED)
        if self.on_trial is not None:
            self.on_trial(trial)


def _close_orphan_runs(study: optuna.Study, tracker: Tracker, target: int) -> None:
    """Trials of killed processes are failed (and run again: see :func:`store.fail_stale_trials`);
    their MLflow runs are closed to match."""
    store.fail_stale_trials(study, retry=store.n_finished(study) < target)
    dead = {t.number: "worker died" for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    try:
        closed = tracker.close_orphans(dead)
    except Exception:  # noqa: BLE001 - tidying must never stop a study
        logger.exception("could not close orphaned MLflow runs")
        return
    if closed:
        logger.warning("closed %d MLflow run(s) left RUNNING by a process that died", closed)


def _run(plan: _Plan, study: optuna.Study, tracker: Tracker | NullTracker, on_trial: _Watch) -> str | None:
    """Run the study's remaining trials inside this invocation's parent run; returns its id."""
    config = plan.config

    def work(parent_run_id: str | None) -> None:
        with torch_threads(TORCH_THREADS):
            train(parent_run_id)

    def train(parent_run_id: str | None) -> None:
        tracker.start_writer()  # its start-up overlaps the range test or the first trial
        lr_bounds, run_study = fixed_lr_bounds(config), study
        if config.search.lr.auto:  # inside the parent run: the range-test runs nest under it
            from autolr.autobounds import auto_lr_bounds

            lr_bounds = auto_lr_bounds(config, study, tracker, parent_run_id)
        if config.search.lr.auto or plan.invocation:  # the sampler seeded for the rates and this invocation
            run_study = open_study(config, plan.storage_url, lr_bounds, invocation=plan.invocation)
        deadline = time.monotonic() + plan.timeout_s if plan.timeout_s else None
        objective = Objective(config, lr_bounds, tracker=tracker, parent_run_id=parent_run_id, progress=on_trial.bar)
        run = functools.partial(run_trials, objective=objective, url=plan.storage_url, target=config.trials, deadline=deadline, grid=config.sampler == "grid")
        if plan.parallel and store.n_finished(run_study) < config.trials:  # this process is worker 0: a spawned worker spends
            # seconds of CPU importing and warming up; with the search at its target (a resumed confirmation) none is spawned
            here = functools.partial(run, open_study(config, plan.storage_url, lr_bounds, parallel=True, invocation=plan.invocation))
            on_trial.jobs = plan.jobs
            _run_workers(plan, run_study, lr_bounds, parent_run_id, on_trial, here)
        else:
            run(run_study, on_trial=on_trial)
        grid_done = config.sampler == "grid" and grid_exhausted(run_study)  # a grid smaller than the target: all of it ran
        timed_out = deadline is not None and time.monotonic() >= deadline
        on_trial.stopped = "grid" if grid_done else "timeout" if timed_out else ""
        if (store.n_finished(run_study) >= config.trials or grid_done) and not timed_out:
            run_confirmation(
                config, run_study, plan.storage_url, lr_bounds=lr_bounds, on_trial=on_trial.confirmed,
                make_objective=lambda seeded: Objective(seeded, lr_bounds, tracker=tracker, parent_run_id=parent_run_id, progress=on_trial.bar),
            )  # fmt: skip

    with tracker.parent_run(
        f"{config.name}@{time.strftime('%Y-%m-%d %H:%M:%S')}",
        params={
            "study": config.name,
            config.code_key: config.code_label,  # task or loop
            "sampler": config.sampler,
            "sampler_ceiling": _ceiling(config),  # in effect
            "target_trials": config.trials,
            **_budget(config),
            "seed": config.seed,
            "metric": config.metric,
            "direction": config.direction,
        },  # fmt: skip
        tags={
            keys.STUDY: config.name,
            keys.STORAGE: plan.storage_url,
            keys.ROLE: keys.ROLE_STUDY,
            keys.HOST: socket.gethostname(),
            keys.PID: str(os.getpid()),
        },  # fmt: skip
        description=f"autolr study `{config.name}`: {config.code_label}, {config.sampler} sampler, target {config.trials} trials.",
    ) as parent_run_id:
        _trials_view(config, tracker)
        try:
            work(parent_run_id)
        finally:
            _finish_parent(config, study, plan.storage_url, tracker, parent_run_id)
    return parent_run_id


def _budget(config: StudyConfig) -> dict[str, int]:
    """The training budget the parent run records: autolr's trainer's; a loop's is its own (as in the export)."""
    return {"epochs": config.train.epochs, "batch_size": config.train.batch_size} if config.code_key == "task" else {}


def _run_workers(plan: _Plan, study: optuna.Study, lr_bounds: LrBounds, parent_run_id: str | None, on_trial, run_here) -> None:
    """Worker 0's trials in this process (``run_here``), workers 1..N-1 in spawned ones (a spawned worker
    spends seconds of CPU importing before its first trial); every worker's finished trials are reported
    after each of this process's own and every 0.5 s once it is done. A worker killed from outside costs
    its trial only (failed and run again by the others); one that failed with an error stops the invocation."""
    seen = {t.number for t in study.get_trials(deepcopy=False, states=(*store.FINISHED, TrialState.FAIL))}  # not earlier invocations' trials
    exits = run_workers(
        _worker, [(plan, dict(lr_bounds), parent_run_id, i) for i in range(1, plan.jobs)],
        poll=lambda: _report_new(study, seen, on_trial), here=lambda: run_here(on_trial=lambda _trial: _report_new(study, seen, on_trial)),
    )  # fmt: skip
    _report_new(study, seen, on_trial)
    failed = [e for e in exits if e.exitcode and not e.lost]
    if failed:
        raise RuntimeError("; ".join(f"worker {e.index}: {e.error or f'exit code {e.exitcode}, see the log above'}" for e in failed))
    lost = [e for e in exits if e.lost]  # this process, worker 0, ran on to the target: their trials were run again
    if lost:
        logger.warning("%s; its trial was failed and run again by the other workers", ", ".join(e.describe() for e in lost))


def _report_new(study: optuna.Study, seen: set[int], on_trial) -> None:
    for t in study.get_trials(deepcopy=False, states=(*store.FINISHED, TrialState.FAIL)):
        if t.number not in seen:
            seen.add(t.number)
            if on_trial is not None:
                on_trial(t)


def _trials_view(config: StudyConfig, tracker: Tracker) -> None:
    """The experiment's trials view, sorted by the objective, set as the study starts: the MLflow UI
    shows the trials that way while they run (a view already so is not written again)."""
    from autolr.report import metric_key

    try:
        tracker.set_trials_view(metric_key(config.metric), ascending=config.direction == "minimize")
    except Exception as exc:  # noqa: BLE001 - a view, not a record: the study goes on
        logger.warning("could not set the experiment's trials view: %s", exc)


def _finish_parent(config: StudyConfig, study: optuna.Study, storage_url: str, tracker: Tracker, parent_run_id: str) -> None:
    """Best configuration (params, tags, YAML artifact), the study's curves and description on the
    parent run, then its plots in a detached job; failures here lose nothing. The run's params, tags
    and metrics go in one ``log_batch`` (each is a transaction that reads the run first). ``study``
    is the invocation's own: its cache holds every trial it saw, so only newer ones are read."""
    from autolr import plot_job, report
    from autolr.export import best_export, to_yaml

    if not tracker.active:  # nothing to record the best configuration and plots into
        return
    try:
        tracker.flush()  # the plots read back every point of this invocation's trials
        if tracker.store_down is not None or not tracker.reachable():
            why = tracker.store_down or "the store does not answer"
            logger.error(f"this invocation's best configuration and plots are not logged to MLflow ({why}); `autolr export` "
                         "reads the best configuration from the Optuna storage, and the next invocation that runs trials "
                         "draws the study's plots again")  # fmt: skip
            return
        export = best_export(config, study, storage_url)
        try:
            rows = [store.trial_row(t) for t in study.get_trials(deepcopy=False)]
            summary = f"({config.code_label}, {config.sampler} sampler, target {config.trials} trials)"
            record = report.study_record(rows, study=config.name, metric=config.metric, direction=config.direction, summary=summary,
                                         range_tests=store.range_test_limits(study), export=export)  # fmt: skip
        except Exception:  # noqa: BLE001 - the best configuration is still recorded
            logger.exception("could not describe the study on the parent run")
            record = report.StudyRecord({}, None)
        best = {} if export is None else {f"best.{k}": v for k, v in export["params"].items()}
        tags = report.best_tags(export)
        tracker.log_run(parent_run_id, params=best, tags=tags, series=record.series, description=record.description)
        if export is not None:
            tracker.log_text(parent_run_id, to_yaml(export), "best_config.yaml")
        _mark_exported(tracker, export)
    except OSError as exc:  # a full disk (the tracking store's StoreFullError says which) is one line
        logger.error("could not record the best configuration and the study's curves on the parent run: %s", exc)
        return
    except Exception:  # noqa: BLE001 - the study itself is safe in its storage
        logger.exception("could not record the best configuration and the study's curves on the parent run")
        return
    if not plot_job.enabled():  # AUTOLR_PLOTS=0: the next invocation without it draws the study's plots
        return
    try:
        job = plot_job.PlotJob(
            tracker.tracking_uri, tracker.experiment_name, tracker.study_uid, parent_run_id, storage_url, config.name, config.metric, config.direction
        )
        plot_job.start(job)
    except OSError as exc:
        logger.error("could not start the study's plots: %s", exc)
    except Exception:  # noqa: BLE001
        logger.exception("could not start the study's plots")


def _mark_exported(tracker: Tracker, export: dict[str, Any] | None) -> None:
    """The winner's runs tagged, a column of the trials view; a failure costs that column only."""
    from autolr.report import step_back_scale

    try:  # a step back's runs are its confirmation's
        tracker.mark_exported(export["trial"] if export else None, step_back_scale(export))
    except Exception as exc:  # noqa: BLE001 - the best configuration and the plots are recorded all the same
        logger.warning("could not tag the exported configuration's MLflow runs (autolr.exported): %s", exc)


def export_best(study: str | Path | StudyConfig, *, storage: str | None = None, path: str | Path | None = None, fmt: str = "yaml") -> str:
    """The best configuration as YAML or JSON text (written to ``path`` when given)."""
    from autolr.export import best_export, write_export

    config = study if isinstance(study, StudyConfig) else load_study(study)
    url = storage or store.default_storage_url(config)
    export = best_export(config, store.load(config, url), url)
    if export is None:
        raise RuntimeError(f"study {config.name!r} in {url} has no COMPLETE trial yet; run `autolr tune {config.path}`")
    if export["confirmation"] == "pending":  # interrupted, or still running in another process
        logger.warning("study %s: its confirmation is not over, so this export is the best single-seed trial (confirmation: pending); "
                       "run `autolr tune %s` to finish it", config.name, config.path)  # fmt: skip
    elif export["confirmation"] == "all dropped":
        logger.warning("study %s: every configuration confirmed diverged or failed on a fresh seed; this export is the best single-seed trial, "
                       "which did not hold", config.name)  # fmt: skip
    return write_export(export, path, fmt)
