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
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autolr import choices, keys, owner, sqlite, stability
from autolr.config import StudyConfig
from autolr.errors import InputError, StudyFileError
from autolr.identity import check as identity_check
from autolr.identity import widening
from autolr.retry import RetryingRDBStorage

__all__ = [
    "FINISHED",
    "GRACE_S",
    "HEARTBEAT_S",
    "best_trial",
    "check_identity",
    "count_by_state",
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
    "tell",
    "told",
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
    try:
        _storage(url, reading=True).get_study_id_from_name(name)  # one row; the study names load every study's attrs
    except KeyError:
        return False
    return True


def create_or_load(
    config: StudyConfig, url: str, *, sampler: optuna.samplers.BaseSampler, pruner: optuna.pruners.BasePruner, identity: bool = True
) -> optuna.Study:
    """The study in its storage (created on first use), with ``sampler`` and ``pruner``.

    ``identity``: the stored study's identity (:mod:`autolr.identity`) is checked against ``config``,
    and written where it is missing (a new study, or one an older autolr created) or extended. A
    study that lives beside another (``<name>.confirm``) passes False: the search study holds it.

    Raises:
        InputError: the stored study was created by another study file (task, budget, objective or a
            search space that ``config.extend_space`` does not allow to widen).
        StudyFileError: the stored study optimises in the other direction.
    """
    study = optuna.create_study(storage=_storage(url), study_name=config.name, direction=config.direction, sampler=sampler, pruner=pruner, load_if_exists=True)
    record = _identity(study, config, url, reading=False) if identity else None
    if study.direction.name.lower() != config.direction:  # a study of an older autolr, before identities
        raise StudyFileError(
            config.path, "objective.direction", f"{study.direction.name.lower()} (the study {config.name!r} in {shown(url)} "
            "was created so; rename the study to start afresh)", config.direction,
        )  # fmt: skip
    if record is not None:  # a new study's, an older one's adopted, or a space extended
        stored = study.user_attrs.get(keys.IDENTITY)
        if isinstance(stored, dict) and isinstance(stored.get("identity"), dict):  # said once, as it is stored
            logger.warning("%s: --extend-space widened the search space of study %r in %s: %s", config.path, config.name, shown(url), widening(config, stored))
        study.set_user_attr(keys.IDENTITY, record)
    choices.widen(study, config)  # a schedule or optimizer added (--extend-space): the stored trials' choices too
    return study


def load(config: StudyConfig, url: str, *, identity: bool = True) -> optuna.Study:
    """The stored study, for reading (``show``, ``export``, the range-test cache); a read-only SQLite
    file is read as it is.

    Raises:
        InputError: there is no such study in that storage, with how to create it; or (``identity``)
            the stored study was created by another study file.
    """
    if not exists(config.name, url):
        raise InputError(f"no study {config.name!r} in {shown(url)}; run `autolr tune {config.path}` first (or pass --storage)")
    study = optuna.load_study(study_name=config.name, storage=_storage(url, reading=True))
    if identity:
        _identity(study, config, url, reading=True)
    return study


def load_named(name: str, url: str) -> optuna.Study:
    """The stored study called ``name``, for reading, without its study file (the plot job's view)."""
    return optuna.load_study(study_name=name, storage=_storage(url, reading=True))


def check_identity(config: StudyConfig, url: str) -> StudyConfig:
    """Refuse a study file that another study's stored identity does not admit, before anything runs
    or is written (what :func:`create_or_load` would refuse); ``config`` with its categorical choices
    in the order the stored study holds them (:func:`autolr.choices.in_stored_order`).

    Raises:
        InputError: as :func:`create_or_load`.
    """
    if not exists(config.name, url):
        return config
    study = optuna.load_study(study_name=config.name, storage=_storage(url, reading=True))
    _identity(study, config, url, reading=False)
    return choices.in_stored_order(config, study)


def _identity(study: optuna.Study, config: StudyConfig, url: str, *, reading: bool) -> dict[str, Any] | None:
    """The identity record to store (None: the stored one stands); raises where ``config`` is another study's."""
    attrs = study.user_attrs
    return identity_check(config, attrs.get(keys.IDENTITY), url=shown(url), reading=reading, code=attrs.get(keys.CODE))


def shown(url: str) -> str:
    """A storage URL fit for a message: its password masked."""
    import sqlalchemy.engine

    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy parses: the opening says so
        return url


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best COMPLETE trial in the study's direction, or None when there is none yet."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    pick = min if study.direction == optuna.study.StudyDirection.MINIMIZE else max
    return pick(complete, key=lambda t: t.value)


def n_finished(study: optuna.Study) -> int:
    counts = count_by_state(study)
    if counts is not None:
        return sum(counts.get(s, 0) for s in FINISHED)
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def count_by_state(study: optuna.Study) -> dict[TrialState, int] | None:
    """The study's trials per state counted by the database (autolr's RDB storages), or None where the
    storage can only count by loading every trial."""
    backend = getattr(study._storage, "_backend", study._storage)  # Optuna puts a cache in front of an RDBStorage
    count = getattr(backend, "count_trials", None)
    return count(study._study_id) if count is not None else None


_TOLD: weakref.WeakKeyDictionary[optuna.Trial, FrozenTrial] = weakref.WeakKeyDictionary()


def tell(trial: optuna.Trial, value: float | None = None, *, state: TrialState | None = None) -> FrozenTrial:
    """``study.tell`` that keeps the stored trial it returns, for :func:`told`: whoever runs the trial
    gets it without reading the trial back (two reads of the storage between trials)."""
    frozen = trial.study.tell(trial, value, state=state)
    _TOLD[trial] = frozen
    return frozen


def told(trial: optuna.Trial) -> FrozenTrial | None:
    """The trial as :func:`tell` stored it in this process, or None when it was not told that way."""
    return _TOLD.pop(trial, None)


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


def fail_stale_trials(study: optuna.Study, *, retry: bool = True, running: Sequence[FrozenTrial] | None = None) -> list[FrozenTrial]:
    """Mark FAIL the running trials whose process is gone, and queue each one's configuration to run
    once more; returns the trials failed here.

    Gone: a process of this machine that no longer runs (its ``autolr.owner``, at once: a job
    requeued right after a kill finds its trials failed), or one of another machine whose heartbeat
    is ``GRACE_S`` old. Of several processes that find the same trial, one fails it (the storage refuses the
    others) and that one queues the retry: a WAITING trial with the same configuration and
    ``autolr.retry_of`` = the killed trial's number (:func:`queue_retry`).
    ``retry``: False when the study holds its target already. ``running``: the study's RUNNING trials
    as the caller just read them (else they are read here).
    """
    storage = study._storage
    with experimental_ok():
        beats = getattr(storage, "get_heartbeat_interval", lambda: None)()  # RDB storages; not the in-memory one
        stale = set(storage._get_stale_trial_ids(study._study_id)) if beats else set()
    failed = []
    if running is None:
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in running:
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
            again = retry and queue_retry(study, t)
            logger.warning("trial %d failed: %s%s", t.number, why, "; its configuration runs once more" if again else "")
    return failed


def _runs_again(t: FrozenTrial, *, interrupted: bool) -> bool:
    """Whether a killed (or ``interrupted``) trial's configuration is queued again: :func:`queue_retry`'s rule."""
    return bool(t.params) and keys.CONFIRM_OF not in t.user_attrs and (keys.RETRY_OF not in t.user_attrs or interrupted)


def queue_retry(study: optuna.Study, t: FrozenTrial, *, interrupted: bool = False) -> bool:
    """Queue the configuration of ``t``, a trial killed or interrupted, to run once more: a WAITING
    trial with ``autolr.retry_of`` = its number (and its ``autolr.source``: a swept configuration stays
    tagged), which a later trial asked runs (Optuna runs the queue in order). Not for a confirmation
    run (the confirmation trains its missing seeds itself), a trial stopped before its configuration
    was drawn, or a killed retry (a configuration that kills its process twice is not run a third
    time; an ``interrupted`` one is: a second Ctrl-C is the user's, not the configuration's); returns
    whether it queued one."""
    if not _runs_again(t, interrupted=interrupted):
        return False
    source = {keys.SOURCE: t.user_attrs[keys.SOURCE]} if keys.SOURCE in t.user_attrs else {}
    study.enqueue_trial(t.params, user_attrs={keys.RETRY_OF: t.number, **source})
    return True


@contextlib.contextmanager
def experimental_ok() -> Iterator[None]:
    """Heartbeats and stale-trial checks are 'experimental' in Optuna since v2.9; we rely on them on
    purpose, and the warning at every trial would bury the user's own output."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


_OPEN: dict[tuple, optuna.storages.BaseStorage] | None = None  # (url, reading, file) -> storage, inside reusing_storages()


@contextlib.contextmanager
def reusing_storages() -> Iterator[None]:
    """Within the block, each storage is opened once: opening one checks its tables and schema version
    (~0.1 s, more on a loaded machine), and one invocation of ``tune`` reads its storage a dozen times.
    Its studies share one Optuna trial cache (:func:`_cached`), so a study loaded again reads only the
    trials that are new or were unfinished. Outside the block every call opens afresh, so a file
    changed between two commands is seen as it is."""
    global _OPEN
    outer, _OPEN = _OPEN, {} if _OPEN is None else _OPEN
    try:
        yield
    finally:
        _OPEN = outer


def _storage(url: str, *, reading: bool = False) -> optuna.storages.BaseStorage:
    """:func:`_open_storage`, reused within :func:`reusing_storages` (an SQLite file replaced under
    the same URL is opened afresh). The file is checked to be a study storage when it is opened, not
    at each reuse (a connection and a read of its schema, 1-2 ms, several times at the end of a
    study): within one invocation only a program rewriting the open database in place could change
    that, and no check between two of our writes would stop it."""
    path = sqlite.sqlite_path(url)
    if _OPEN is None:
        return _open_storage(url, reading=reading)
    if path is not None and not path.exists():  # created (or refused) by the open, then kept as an existing file is
        storage = _cached(_open_storage(url, reading=reading))
        if path.exists():
            _OPEN[_key(url, path, reading)] = storage
        return storage
    key = _key(url, path, reading)  # a file replaced under the URL is opened, and checked, afresh: a new
    # inode (the open storage's connections hold the old file, so its inode is not reused meanwhile)
    if key not in _OPEN:
        _OPEN[key] = _cached(_open_storage(url, reading=reading))
    return _OPEN[key]


def _cached(storage: optuna.storages.BaseStorage) -> optuna.storages.BaseStorage:
    """An RDB storage behind the trial cache Optuna puts in front of each study it opens on one,
    made once so that every study opened on it shares the cache. A finished trial never changes
    (Optuna refuses to update one), and the cache reads again every trial that was unfinished or is new."""
    if isinstance(storage, optuna.storages.RDBStorage):
        from optuna.storages._cached_storage import _CachedStorage

        return _CachedStorage(storage)
    return storage


def _key(url: str, path: Path | None, reading: bool) -> tuple:
    """Which storage serves ``url`` within :func:`reusing_storages`: a writable SQLite file is opened as
    for writing either way (see :func:`_open_storage`), one storage not two; a file is known by its inode."""
    if path is None:
        return (url, False, None)  # a server database is opened the same way for reading and writing
    stat = path.stat()
    return (url, reading and not sqlite.writable(path), (stat.st_dev, stat.st_ino))


def _open_storage(url: str, *, reading: bool = False) -> optuna.storages.BaseStorage:
    """The storage at ``url``. An SQLite file: checked to be a study storage before anything is written
    into it; read as it is where it cannot be written (``reading``); otherwise in WAL mode, checkpointed
    after each finished trial and at exit, so that the ``.db`` file alone holds every finished trial."""
    path = sqlite.sqlite_path(url)
    if path is None:
        return _rdb(url, {"pool_pre_ping": True})
    _refuse_foreign(path, url)  # before anything (a lock file, the WAL switch, Optuna's tables) is written
    if reading and path.exists() and not sqlite.writable(path):
        return _rdb(url, {"creator": sqlite.read_only_connector(path)}, skip_table_creation=True)
    with sqlite.prepared(path):  # the first process creates the tables, the others wait
        storage = _rdb(url, {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}, cls=_CheckpointedStorage)
    sqlite.commit_without_fsync(storage.engine)
    sqlite.checkpoint_at_exit(path)
    return storage


def _refuse_foreign(path: Path, url: str) -> None:
    why = sqlite.foreign(path)
    if why is not None:
        raise InputError(f"storage {url}: {path} is not an autolr/Optuna study storage ({why}); "
                         "point --storage at a new file or at the database the study was tuned in")  # fmt: skip


class _CheckpointedStorage(RetryingRDBStorage):
    """An SQLite storage whose finished trials reach the ``.db`` file at once.

    In WAL mode a commit lands in ``<file>-wal``; SQLite copies it into the file only every 1000 pages
    or when the last connection closes. A process killed before that leaves the study's recent trials
    in the ``-wal`` alone, lost to whoever copies the ``.db`` (as backups do). A PASSIVE checkpoint
    after each finished trial copies what no reader holds, without waiting for anyone; it runs in a
    thread of its own (:class:`autolr.sqlite.BackgroundCheckpoint`), so the next trial does not wait.
    """

    _checkpoint: sqlite.BackgroundCheckpoint | None = None

    def __getstate__(self) -> dict[str, Any]:  # a thread does not pickle; a copy starts its own
        state = super().__getstate__()
        state.pop("_checkpoint", None)
        return state

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        changed = super().set_trial_state_values(trial_id, state, values)
        if state.is_finished():
            if self._checkpoint is None:
                self._checkpoint = sqlite.BackgroundCheckpoint(self.engine)
            self._checkpoint.request()
        return changed


def _rdb(url: str, engine_kwargs: dict, *, skip_table_creation: bool = False, cls: type = RetryingRDBStorage) -> optuna.storages.RDBStorage:
    import sqlalchemy.exc

    with experimental_ok():
        try:
            return cls(url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S, skip_table_creation=skip_table_creation)
        except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError) as exc:
            raise InputError(f"--storage {shown(url)}: not a storage URL SQLAlchemy can open ({exc}); e.g. sqlite:///study.db "
                             "or postgresql://user@host/db") from None  # fmt: skip
        except ImportError as exc:  # the URL's database driver
            raise InputError(_no_driver(url, exc.__cause__ or exc)) from None
        except RuntimeError as exc:
            if "no longer compatible" not in str(exc):
                raise
            raise InputError(_incompatible(url, exc)) from None


def _no_driver(url: str, cause: BaseException) -> str:
    fix = "pip install 'autolr[postgres]'" if url.startswith("postgresql") else "install the driver SQLAlchemy names for it"
    return f"storage {shown(url)}: its database driver is not installed ({cause}); {fix}"


def _incompatible(url: str, exc: RuntimeError) -> str:
    """Optuna's schema check, on one line: an older Optuna's storage can be upgraded; a schema no Optuna
    version knows is another program's database."""
    if "optuna storage upgrade" in str(exc):
        return f"storage {shown(url)}: made by an older Optuna; upgrade it with `optuna storage upgrade --storage URL`, then re-run"
    return f"storage {shown(url)}: not an autolr/Optuna study storage (its schema is no Optuna version's: another program's database?)"


def trial_row(t: FrozenTrial) -> dict[str, Any]:
    """One stored trial as a flat row for tables and plots: number, state, value, params, and why it
    stopped (a PRUNED trial's reason, a FAIL trial's error)."""
    params = t.user_attrs.get(keys.PARAMS) or t.params or t.system_attrs.get("fixed_params") or {}  # WAITING: what it will run
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
        **stability.ratios(t.user_attrs),  # loss_ratio, low_loss_ratio, last_loss_ratio
        "reason": t.user_attrs.get(keys.PRUNE_REASON) or t.user_attrs.get(keys.ERROR, "") or _orphaned(t),  # a FAIL trial's error
        "source": _source(t),
    }


def _orphaned(t: FrozenTrial) -> str:
    """A RUNNING trial whose process (on this machine) is gone, killed before it could say so: Optuna
    holds it RUNNING until the next ``autolr tune`` on the study marks it failed and retries it."""
    record = t.user_attrs.get(keys.OWNER)
    if t.state != TrialState.RUNNING or not owner.is_dead(record):
        return ""
    again = _runs_again(t, interrupted=False)  # killed: as fail_stale_trials will find it
    then = "marks it failed and, while the study is below its target, runs its configuration again" if again else "marks it failed"
    return f"its process (pid {record['pid']}) is gone: the next autolr tune on the study {then}"


def _source(t: FrozenTrial) -> str:
    """Who proposed the trial, where not the sampler: ``sweep`` (the schedule sweep), ``range_test``
    (its suggestion), ``retry of N`` (a killed or interrupted trial's configuration, again)."""
    retry = t.user_attrs.get(keys.RETRY_OF)
    source = t.user_attrs.get(keys.SOURCE) or ""
    return f"{source}, retry of {retry}".lstrip(", ") if retry is not None else source


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
