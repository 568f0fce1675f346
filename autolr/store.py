"""The Optuna storage of a study: where it lives, opening it, and reading it back.

The layer under everything that touches a stored study (running it, exporting it, caching range tests
in it, showing it): storage URLs, opening a storage with the settings several processes need, whether
a study exists, its best trial and its id. Nothing here runs a trial or builds a sampler; whoever runs
the study (:mod:`autolr.study`) hands the sampler and pruner in.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autolr import keys, owner, sqlite
from autolr.config import StudyConfig
from autolr.errors import InputError, StudyFileError
from autolr.retry import RetryingRDBStorage

__all__ = [
    "FINISHED",
    "GRACE_S",
    "HEARTBEAT_S",
    "best_trial",
    "create_or_load",
    "default_storage_url",
    "exists",
    "fail_stale_trials",
    "importances",
    "last_reported",
    "load",
    "n_finished",
    "range_test_limits",
    "study_uid",
    "trial_row",
]

logger = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# A worker's running trial writes a heartbeat every HEARTBEAT_S; one silent for GRACE_S (a killed
# worker) is marked FAIL by whoever starts the next trial, so a crash never blocks the target.
HEARTBEAT_S = int(os.environ.get("AUTOLR_HEARTBEAT_S", "5"))
GRACE_S = int(os.environ.get("AUTOLR_GRACE_S", str(3 * HEARTBEAT_S)))
SQLITE_TIMEOUT_S = 300  # writers wait this long for the lock instead of losing the trial


def default_storage_url(config: StudyConfig) -> str:
    """``sqlite:///<folder of the study file>/<study name>.db``."""
    folder = Path(config.path).resolve().parent
    return f"sqlite:///{folder / (config.file_stem + '.db')}"


def exists(name: str, url: str) -> bool:
    """Whether the storage at ``url`` holds a study ``name`` (a missing SQLite file is not created)."""
    path = sqlite.sqlite_path(url)
    if path is not None and not path.exists():
        return False
    return name in optuna.study.get_all_study_names(storage=_rdb(url, {}))


def create_or_load(config: StudyConfig, url: str, *, sampler: optuna.samplers.BaseSampler, pruner: optuna.pruners.BasePruner) -> optuna.Study:
    """The study in its storage (created on first use), with ``sampler`` and ``pruner``.

    Raises:
        StudyFileError: the stored study optimises in the other direction.
    """
    study = optuna.create_study(storage=_storage(url), study_name=config.name, direction=config.direction, sampler=sampler, pruner=pruner, load_if_exists=True)
    if study.direction.name.lower() != config.direction:
        raise StudyFileError(
            config.path, "objective.direction", f"{study.direction.name.lower()} (the study {config.name!r} in {url} "
            "was created so; rename the study to start afresh)", config.direction,
        )  # fmt: skip
    return study


def load(config: StudyConfig, url: str) -> optuna.Study:
    """The stored study, for reading (``show``, ``export``, the range-test cache).

    Raises:
        InputError: there is no such study in that storage, with how to create it.
    """
    if not exists(config.name, url):
        raise InputError(f"no study {config.name!r} in {url}; run `autolr tune {config.path}` first (or pass --storage)")
    return optuna.load_study(study_name=config.name, storage=_storage(url))


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best COMPLETE trial in the study's direction, or None when there is none yet."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    pick = min if study.direction == optuna.study.StudyDirection.MINIMIZE else max
    return pick(complete, key=lambda t: t.value)


def n_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def range_test_limits(study: optuna.Study) -> dict[str, float]:
    """Optimizer -> ``max_stable_lr`` of the range test the study caches (``lr: auto``), where it holds one."""
    prefix = keys.RANGE_TEST_CACHE.format(optimizer="")
    limits = {}
    for name, entry in study.user_attrs.items():
        with contextlib.suppress(KeyError, TypeError, ValueError):
            if name.startswith(prefix):
                limits[name[len(prefix) :]] = float(entry["result"]["max_stable_lr"])
    return limits


def study_uid(study: optuna.Study) -> str:
    """The study's own id, kept in its user attrs (set on first use): its MLflow runs carry it, so that
    two studies of one name in different storages, which share an MLflow experiment, never mix runs.
    (Two invocations creating the same study at the same instant can each keep their own; at worst,
    the plots of one then miss the other's runs.)"""
    uid = study.user_attrs.get(keys.UID)
    if uid is None:
        study.set_user_attr(keys.UID, uuid.uuid4().hex)
        uid = study.user_attrs[keys.UID]  # re-read: of two racing writers, both keep the last one's
    return uid


def fail_stale_trials(study: optuna.Study, *, retry: bool = True) -> list[FrozenTrial]:
    """Mark FAIL the running trials whose process is gone, and queue each one's configuration to run
    once more; returns the trials failed here.

    Gone: a process of this machine that no longer runs (its ``autolr.owner``, at once: a job
    requeued right after a kill finds its trials failed), or one of another machine whose heartbeat
    is ``GRACE_S`` old. Of several processes that find the same trial, one fails it (the storage refuses the
    others) and that one queues the retry: a WAITING trial with the same configuration and
    ``autolr.retry_of`` = the killed trial's number, which the next trial asked runs. A retry is not
    retried again, nor is a confirmation run (the confirmation trains its missing seeds itself).
    ``retry``: False when the study holds its target already.
    """
    storage = study._storage
    with experimental_ok():
        beats = getattr(storage, "get_heartbeat_interval", lambda: None)()  # RDB storages; not the in-memory one
        stale = set(storage._get_stale_trial_ids(study._study_id)) if beats else set()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        record = t.user_attrs.get(keys.OWNER)
        dead = owner.is_dead(record)
        if not dead and (t._trial_id not in stale or owner.on_this_machine(record)):  # alive here: late beats (a storage outage) do not kill it
            continue
        why = f"its process (pid {t.user_attrs[keys.OWNER]['pid']}) is gone" if dead else f"its process sent no heartbeat for {GRACE_S} s"
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # a finished trial takes no attr
            if keys.CONFIRM_OF not in t.user_attrs:  # a confirmation run without an error is trained again
                storage.set_trial_user_attr(t._trial_id, keys.ERROR, f"killed: {why}")
            if not storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                continue
            failed.append(t)
            again = retry and t.params and not {keys.RETRY_OF, keys.CONFIRM_OF} & set(t.user_attrs)
            if again:
                study.enqueue_trial(t.params, user_attrs={keys.RETRY_OF: t.number})
            logger.warning("trial %d failed: %s%s", t.number, why, "; its configuration runs once more" if again else "")
    return failed


@contextlib.contextmanager
def experimental_ok() -> Iterator[None]:
    """Heartbeats and stale-trial checks are 'experimental' in Optuna since v2.9; we rely on them on
    purpose, and the warning at every trial would bury the user's own output."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def _storage(url: str) -> optuna.storages.BaseStorage:
    path = sqlite.sqlite_path(url)
    if path is not None:
        with sqlite.prepared(path):  # the first process creates the tables, the others wait
            return _rdb(url, {"connect_args": {"timeout": SQLITE_TIMEOUT_S}})
    return _rdb(url, {"pool_pre_ping": True})


def _rdb(url: str, engine_kwargs: dict) -> optuna.storages.RDBStorage:
    import sqlalchemy.exc

    with experimental_ok():
        try:
            return RetryingRDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
        except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError) as exc:
            raise InputError(f"--storage {url}: not a storage URL SQLAlchemy can open ({exc}); e.g. sqlite:///study.db "
                             "or postgresql://user@host/db") from None  # fmt: skip


def trial_row(t: FrozenTrial) -> dict[str, Any]:
    """One stored trial as a flat row for tables and plots: number, state, value, params, and why it
    stopped (a PRUNED trial's reason, a FAIL trial's error)."""
    params = t.user_attrs.get(keys.PARAMS, t.params)
    return {
        "trial": t.number,
        "state": t.state.name,
        "value": t.value,
        "optimizer": params.get("optimizer"),
        "lr": params.get("lr"),
        "schedule": params.get("schedule"),
        "warmup": params.get("warmup"),
        "steps": t.user_attrs.get(keys.STEPS),
        "diverged": bool(t.user_attrs.get(keys.DIVERGED)),
        "loss_ratio": t.user_attrs.get(keys.LOSS_RATIO),
        "reason": t.user_attrs.get(keys.PRUNE_REASON) or t.user_attrs.get(keys.ERROR, ""),  # a FAIL trial's error
    }


def last_reported(trial: FrozenTrial) -> float | None:
    """The last intermediate value a trial reported (a pruned trial's standing), or None."""
    return trial.intermediate_values[max(trial.intermediate_values)] if trial.intermediate_values else None


def importances(study: optuna.Study) -> tuple[dict[str, float], str]:
    """fANOVA importances of the parameters every complete trial has, or ({}, why not)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return {}, f"parameter importances need at least 2 complete trials; the study has {len(complete)}"
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        return dict(optuna.importance.get_param_importances(study, evaluator=evaluator)), ""
    except Exception as exc:  # noqa: BLE001 - e.g. every trial with the same parameters
        return {}, f"parameter importances unavailable: {exc}"
