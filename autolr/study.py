"""Running a study: storage, sampler, pruner, workers, resume to the target, the summary.

``trials`` is the study's total target of finished (COMPLETE or PRUNED) trials: every invocation
counts what the storage already holds and runs only the rest, so re-running a command resumes it.
Several worker processes (``jobs``) share one storage; a killed worker's trial is failed by the
storage heartbeat and the study goes on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import socket
import time
import uuid
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from autolr import sqlite
from autolr.config import DEFAULT_TRACKING_URI, StudyConfig, load_study
from autolr.errors import InputError, StudyFileError
from autolr.objective import ERROR_ATTR, LOSS_RATIO_ATTR, PARAMS_ATTR, REASON_ATTR, STEPS_ATTR, Objective
from autolr.sampler import DIVERGED_ATTR, make_sampler
from autolr.space import LrBounds, grid_search_space

__all__ = ["TuneResult", "default_storage_url", "export_best", "open_study", "study_results", "tune"]

if TYPE_CHECKING:
    from autolr.tracking import Tracker

logger = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# A worker's running trial writes a heartbeat every HEARTBEAT_S; one silent for GRACE_S (a killed
# worker) is marked FAIL by whoever starts the next trial, so a crash never blocks the target.
HEARTBEAT_S = int(os.environ.get("AUTOLR_HEARTBEAT_S", "5"))
GRACE_S = int(os.environ.get("AUTOLR_GRACE_S", str(3 * HEARTBEAT_S)))
# Torch threads of a process running trials (AUTOLR_TORCH_THREADS). The small models tuned on a CPU
# train fastest on one thread, and OpenMP's spinning threads slow down badly when anything else (the
# MLflow writer, another worker) wants a core. Raise it for large models on many cores.
TORCH_THREADS = int(os.environ.get("AUTOLR_TORCH_THREADS", "1"))
SQLITE_TIMEOUT_S = 300  # writers wait this long for the lock instead of losing the trial
MAX_CONSECUTIVE_FAILS = 3
UID_ATTR = "autolr.uid"


@dataclasses.dataclass
class TuneResult:
    study_name: str
    storage: str
    tracking_uri: str | None
    direction: str
    metric: str
    best: FrozenTrial | None
    trials: list[FrozenTrial]
    parent_run_id: str | None = None

    def count(self, state: TrialState) -> int:
        return sum(1 for t in self.trials if t.state == state)


def default_storage_url(config: StudyConfig) -> str:
    """``sqlite:///<folder of the study file>/<study name>.db``."""
    folder = Path(config.path).resolve().parent
    return f"sqlite:///{folder / (config.file_stem + '.db')}"


def _storage(url: str) -> optuna.storages.BaseStorage:
    if url.startswith("sqlite:///"):
        with sqlite.prepared(sqlite.sqlite_path(url)):  # the first process creates the tables, the others wait
            return _rdb(url, {"connect_args": {"timeout": SQLITE_TIMEOUT_S}})
    return _rdb(url, {"pool_pre_ping": True})


def _rdb(url: str, engine_kwargs: dict) -> optuna.storages.RDBStorage:
    import sqlalchemy.exc

    with _experimental_ok():
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
        except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError) as exc:
            raise InputError(f"--storage {url}: not a storage URL SQLAlchemy can open ({exc}); e.g. sqlite:///study.db "
                             "or postgresql://user@host/db") from None  # fmt: skip


@contextlib.contextmanager
def _experimental_ok():
    """Heartbeats and stale-trial checks are 'experimental' in Optuna since v2.9; we rely on them on
    purpose, and the warning at every trial would bury the user's own output."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with ``n`` torch threads, then restore the caller's setting."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def study_uid(study: optuna.Study) -> str:
    """The study's own id, kept in its user attrs (set on first use): its MLflow runs carry it, so that
    two studies of one name in different storages, which share an MLflow experiment, never mix runs.
    (Two invocations creating the same study at the same instant can each keep their own; at worst,
    the plots of one then miss the other's runs.)"""
    uid = study.user_attrs.get(UID_ATTR)
    if uid is None:
        study.set_user_attr(UID_ATTR, uuid.uuid4().hex)
        uid = study.user_attrs[UID_ATTR]  # re-read: of two racing writers, both keep the last one's
    return uid


def _fail_stale_trials(study: optuna.Study) -> None:
    with _experimental_ok():
        optuna.storages.fail_stale_trials(study)


def _pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    p = config.pruning
    if p.curve == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_epochs)
    if p.curve == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, p.warmup_epochs), max_resource=config.train.epochs)
    return optuna.pruners.NopPruner()


def open_study(
    config: StudyConfig,
    storage: str | None = None,
    lr_bounds: LrBounds | None = None,
    *,
    create: bool = True,
    worker: int = 0,
) -> optuna.Study:
    """Create (or load) the study in its storage, with the sampler and pruner of the study file.

    The sampler's seed mixes the study's seed with the number of trials already stored and the worker's
    index: a fresh study with one worker is reproducible, while a resumed study or a second worker
    does not replay the random start-up proposals already tried (identical, since training is seeded).
    With ``create=False`` a study missing from the storage is an error that says how to create it.
    """
    url = storage or default_storage_url(config)
    if not create and not _exists(config.name, url):
        raise InputError(f"no study {config.name!r} in {url}; run `autolr tune {config.path}` first (or pass --storage)")
    study = optuna.create_study(
        storage=_storage(url),
        study_name=config.name,
        direction=config.direction,
        pruner=_pruner(config),
        load_if_exists=True,
    )
    if study.direction.name.lower() != config.direction:
        raise StudyFileError(
            config.path, "objective.direction", f"{study.direction.name.lower()} (the study {config.name!r} in {url} "
            "was created so; rename the study to start afresh)", config.direction,
        )  # fmt: skip
    seed = config.seed + 1_000_003 * len(study.get_trials(deepcopy=False)) + 7_919 * worker
    study.sampler = _sampler(config, lr_bounds, seed)
    return study


def _sampler(config: StudyConfig, lr_bounds: LrBounds | None, seed: int) -> optuna.samplers.BaseSampler:
    if lr_bounds is None and not config.search.lr.auto:
        lr_bounds = fixed_lr_bounds(config)
    if config.sampler == "grid" and lr_bounds is None:  # reading only: the grid is not known yet
        return optuna.samplers.RandomSampler(seed=seed)
    grid = grid_search_space(config.search, lr_bounds) if config.sampler == "grid" else None
    return make_sampler(config.sampler, seed=seed % 2**32, grid_space=grid, ceiling=config.pruning.divergence)


def _exists(name: str, url: str) -> bool:
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).exists():
        return False  # do not create an empty database file just to look
    return name in optuna.study.get_all_study_names(storage=_rdb(url, {}))


def fixed_lr_bounds(config: StudyConfig) -> LrBounds:
    return {name: (config.search.lr.low, config.search.lr.high) for name in config.search.optimizers}


def _n_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def _n_claimed(study: optuna.Study) -> int:
    """Finished trials plus those running now (in any worker), stale ones failed first."""
    _fail_stale_trials(study)
    return len(study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING)))


def run_trials(
    config: StudyConfig,
    study: optuna.Study,
    objective: Objective,
    *,
    target: int,
    deadline: float | None,
    on_trial: Callable[[FrozenTrial], None] | None = None,
) -> None:
    """Run trials one at a time until the study holds ``target`` finished trials or time runs out."""
    fails = 0
    while _n_claimed(study) < target and (deadline is None or time.monotonic() < deadline):
        if config.sampler == "grid" and _grid_exhausted(study):
            break
        study.optimize(objective, n_trials=1, catch=(Exception,))
        last = study.get_trials(deepcopy=False)[-1]
        if on_trial is not None:
            on_trial(last)
        fails = fails + 1 if last.state == TrialState.FAIL else 0
        if fails >= MAX_CONSECUTIVE_FAILS:
            raise RuntimeError(
                f"{MAX_CONSECUTIVE_FAILS} trials in a row failed; last: {last.user_attrs.get(ERROR_ATTR, '(see the log above)')}"
            )


def _grid_exhausted(study: optuna.Study) -> bool:
    sampler = study.sampler
    return isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(study)


def _worker(config: StudyConfig, storage: str, lr_bounds: LrBounds, tracking_uri: str | None, parent_run_id, target, deadline_s, worker: int) -> None:
    import torch

    torch.set_num_threads(TORCH_THREADS)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(config, storage, lr_bounds, worker=worker)
    tracker = open_tracker(tracking_uri, config.name)
    if tracker is not None:
        tracker.study_uid = study_uid(study)
    deadline = time.monotonic() + deadline_s if deadline_s else None
    try:
        run_trials(config, study, Objective(config, lr_bounds, tracker=tracker, parent_run_id=parent_run_id), target=target, deadline=deadline)
    finally:
        if tracker is not None:
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
) -> TuneResult:
    """Run (or resume) a study until it holds ``trials`` finished trials (the study file's by default).

    Args:
        study: a study file path or a loaded :class:`StudyConfig`.
        trials: overrides the study file's target.
        timeout_s: stop starting new trials after this many seconds.
        jobs: worker processes sharing the storage (1: run in this process).
        storage: any Optuna storage URL; default ``sqlite:///`` beside the study file.
        tracking_uri: MLflow tracking URI; None turns tracking off.
        seed: overrides the study file's seed.
        on_trial: called with each finished trial (in this process only).
    """
    config = study if isinstance(study, StudyConfig) else load_study(study)
    overrides: dict[str, Any] = {}
    if trials is not None:
        overrides["trials"] = trials
    if seed is not None:
        overrides["seed"] = seed
    config = dataclasses.replace(config, **overrides)
    storage_url = storage or default_storage_url(config)
    _preflight(config)  # before any store is created: bad input writes nothing
    tracker = open_tracker(tracking_uri, config.name)
    if tracker is not None:
        tracker.check_reachable()
        tracker.write_unsent()

    opt_study = open_study(config, storage_url)
    if tracker is not None:
        tracker.study_uid = study_uid(opt_study)
        _close_orphan_runs(opt_study, tracker)

    parent_run_id = None
    try:
        if _n_finished(opt_study) < config.trials:
            parent_run_id = _run(config, opt_study, storage_url, tracker, jobs, timeout_s, on_trial)
    finally:
        if tracker is not None:
            tracker.close()  # stops the MLflow writer once every trial run is written and closed
    return summarize(config, storage_url, tracking_uri, parent_run_id)


def _close_orphan_runs(study: optuna.Study, tracker: Tracker) -> None:
    """Trials of killed workers are failed by the heartbeat; their MLflow runs are closed to match."""
    _fail_stale_trials(study)
    dead = {t.number: "worker died (no heartbeat)" for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    try:
        closed = tracker.close_orphans(dead)
    except Exception:  # noqa: BLE001 - tidying must never stop a study
        logger.exception("could not close orphaned MLflow runs")
        return
    if closed:
        logger.warning("closed %d MLflow run(s) left RUNNING by a process that died", closed)


def _preflight(config: StudyConfig) -> None:
    """Build the task once before any trial: a factory that fails, a wrong metric name or a device
    that is not there are input errors (exit 2), not three failed trials."""
    from autolr.objective import resolve_metric
    from autolr.tasks import build_task

    if config.train.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise StudyFileError(config.path, "train.device", "auto or cpu (torch sees no CUDA device here)", "cuda")
    try:
        task = build_task(config.task, config.task_args, seed=config.seed)
    except Exception as exc:  # noqa: BLE001 - the user's factory: report it, on one line
        reason = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        raise StudyFileError(config.path, "task", f"a factory that builds an autolr.Task from {dict(config.task_args)}", f"<{reason}>") from None
    resolve_metric(config, task)


def _run(config, study, storage_url, tracker, jobs, timeout_s, on_trial) -> str | None:
    deadline = time.monotonic() + timeout_s if timeout_s else None

    def work(parent_run_id: str | None) -> None:
        with torch_threads(TORCH_THREADS):
            train(parent_run_id)

    def train(parent_run_id: str | None) -> None:
        if tracker is not None and jobs <= 1:  # its start-up overlaps the range test or the first trial (workers have their own)
            tracker.start_writer()
        lr_bounds, run_study = fixed_lr_bounds(config), study
        if config.search.lr.auto:  # inside the parent run: the range-test runs nest under it
            lr_bounds = _auto_lr_bounds(config, study, tracker, parent_run_id)
            run_study = open_study(config, storage_url, lr_bounds)
        if jobs <= 1:
            objective = Objective(config, lr_bounds, tracker=tracker, parent_run_id=parent_run_id)
            run_trials(config, run_study, objective, target=config.trials, deadline=deadline, on_trial=on_trial)
        else:
            _run_workers(config, run_study, storage_url, lr_bounds, tracker, parent_run_id, jobs, timeout_s, on_trial)

    if tracker is None:
        work(None)
        return None
    with tracker.parent_run(
        f"{config.name}@{time.strftime('%Y-%m-%d %H:%M:%S')}",
        params={"study": config.name, "task": config.task, "sampler": config.sampler, "target_trials": config.trials,
                "epochs": config.train.epochs, "batch_size": config.train.batch_size, "seed": config.seed,
                "metric": config.metric, "direction": config.direction},  # fmt: skip
        tags={"autolr.study": config.name, "autolr.storage": storage_url, "autolr.role": "study",
              "autolr.host": socket.gethostname(), "autolr.pid": str(os.getpid())},  # fmt: skip
        description=f"autolr study `{config.name}`: {config.task}, {config.sampler} sampler, target {config.trials} trials.",
    ) as parent_run_id:
        try:
            work(parent_run_id)
        finally:
            _finish_parent(config, storage_url, tracker, parent_run_id)
    return parent_run_id


def _run_workers(config, study, storage_url, lr_bounds, tracker, parent_run_id, jobs, timeout_s, on_trial) -> None:
    ctx = multiprocessing.get_context("spawn")
    tracking_uri = tracker.tracking_uri if tracker else None
    procs = [
        ctx.Process(target=_worker, args=(config, storage_url, dict(lr_bounds), tracking_uri, parent_run_id, config.trials, timeout_s, i), daemon=False)
        for i in range(jobs)
    ]
    for p in procs:
        p.start()
    seen: set[int] = set()
    try:
        while any(p.is_alive() for p in procs):
            time.sleep(0.5)
            _report_new(study, seen, on_trial)
    finally:
        for p in procs:
            p.join()
    _report_new(study, seen, on_trial)
    failed = [p.exitcode for p in procs if p.exitcode]
    if failed:
        raise RuntimeError(f"{len(failed)} of {jobs} workers exited with an error (exit codes {failed}); see the log above")


def _report_new(study: optuna.Study, seen: set[int], on_trial) -> None:
    for t in study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.FAIL)):
        if t.number not in seen:
            seen.add(t.number)
            if on_trial is not None:
                on_trial(t)


def _auto_lr_bounds(config: StudyConfig, study: optuna.Study, tracker: Tracker | None, parent_run_id: str | None) -> LrBounds:
    from autolr.autobounds import auto_lr_bounds

    return auto_lr_bounds(config, study, tracker, parent_run_id)


def _finish_parent(config: StudyConfig, storage_url: str, tracker: Tracker, parent_run_id: str) -> None:
    """Best configuration (params, tags, YAML artifact), plots and description on the parent run, curves
    on this invocation's trial runs; failures here lose nothing."""
    from autolr.export import best_export, to_yaml

    try:
        tracker.flush()  # the plots read back every point of this invocation's trials
        if tracker.store_down is not None or not tracker.reachable():
            logger.error("this invocation's best configuration and plots are not logged to MLflow (the store does not "
                         "answer); `autolr export` reads the best configuration from the Optuna storage, and the "
                         "next invocation that runs trials draws the study's plots again")  # fmt: skip
            return
        study = open_study(config, storage_url, create=False)
        export = best_export(config, study)
        if export is not None:
            tracker.log_params(parent_run_id, {f"best.{k}": v for k, v in export["params"].items()})
            tracker.set_tags(parent_run_id, {"autolr.best_trial": export["trial"], "autolr.best_value": export["value"]})
            tracker.log_text(parent_run_id, to_yaml(export), "best_config.yaml")
    except Exception:  # noqa: BLE001 - the study itself is safe in its storage
        logger.exception("could not record the best configuration on the parent run")
        return
    try:
        _record_plots(config, study, tracker, parent_run_id)
    except Exception:  # noqa: BLE001
        logger.exception("could not draw the study's plots")


def _record_plots(config: StudyConfig, study: optuna.Study, tracker: Tracker, parent_run_id: str) -> None:
    """Plots regenerated from the stored data at the end of every invocation (see :mod:`autolr.report`)."""
    from autolr import report

    trials = study.get_trials(deepcopy=False)
    rows = [dict(trial_row(t), last_value=_last_reported(t)) for t in trials]
    importances, note = _importances(study)
    summary = f"({config.task}, {config.sampler} sampler, target {config.trials} trials)"
    report.record_study(tracker, parent_run_id, rows, study=config.name, metric=config.metric, direction=config.direction,
                        importances=importances, importance_note=note, summary=summary)  # fmt: skip
    report.record_trial_curves(tracker, parent_run_id, metric=config.metric)


def _last_reported(trial: FrozenTrial) -> float | None:
    return trial.intermediate_values[max(trial.intermediate_values)] if trial.intermediate_values else None


def _importances(study: optuna.Study) -> tuple[dict[str, float], str]:
    """fANOVA importances of the parameters every complete trial has, or ({}, why not)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return {}, f"parameter importances need at least 2 complete trials; the study has {len(complete)}"
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        return dict(optuna.importance.get_param_importances(study, evaluator=evaluator)), ""
    except Exception as exc:  # noqa: BLE001 - e.g. every trial with the same parameters
        return {}, f"parameter importances unavailable: {exc}"


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best COMPLETE trial in the study's direction, or None when there is none yet."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    pick = min if study.direction == optuna.study.StudyDirection.MINIMIZE else max
    return pick(complete, key=lambda t: t.value)


def summarize(config: StudyConfig, storage_url: str, tracking_uri: str | None, parent_run_id: str | None = None) -> TuneResult:
    study = open_study(config, storage_url, create=False)
    trials = study.get_trials(deepcopy=False)
    return TuneResult(config.name, storage_url, tracking_uri, config.direction, config.metric, best_trial(study), trials, parent_run_id)


def trial_row(t: FrozenTrial) -> dict[str, Any]:
    """One trial as a flat row for tables: number, state, value, params, prune reason."""
    params = t.user_attrs.get(PARAMS_ATTR, t.params)
    return {
        "trial": t.number,
        "state": t.state.name,
        "value": t.value,
        "optimizer": params.get("optimizer"),
        "lr": params.get("lr"),
        "schedule": params.get("schedule"),
        "warmup": params.get("warmup"),
        "steps": t.user_attrs.get(STEPS_ATTR),
        "diverged": bool(t.user_attrs.get(DIVERGED_ATTR)),
        "loss_ratio": t.user_attrs.get(LOSS_RATIO_ATTR),
        "reason": t.user_attrs.get(REASON_ATTR, ""),
    }


def study_results(study: str | Path | StudyConfig, *, storage: str | None = None) -> TuneResult:
    """The trials of a study already in its storage (nothing is run or created)."""
    config = study if isinstance(study, StudyConfig) else load_study(study)
    return summarize(config, storage or default_storage_url(config), None)


def export_best(
    study: str | Path | StudyConfig, *, storage: str | None = None, path: str | Path | None = None, fmt: str = "yaml"
) -> str:
    """The best configuration as YAML or JSON text (written to ``path`` when given)."""
    from autolr.export import best_export, write_export

    config = study if isinstance(study, StudyConfig) else load_study(study)
    url = storage or default_storage_url(config)
    export = best_export(config, open_study(config, url, create=False))
    if export is None:
        raise RuntimeError(f"study {config.name!r} in {url} has no COMPLETE trial yet; run `autolr tune {config.path}`")
    return write_export(export, path, fmt)


def open_tracker(tracking_uri: str | None, experiment: str) -> "Tracker | None":
    """The study's tracker (mlflow is imported only here, when tracking is on)."""
    if not tracking_uri:
        return None
    from autolr.tracking import Tracker

    return Tracker(tracking_uri, experiment=experiment)
