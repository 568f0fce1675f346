"""Running trials to a target: each one from its claim to its final state, with a heartbeat.

autolr drives Optuna's ask-and-tell itself rather than ``study.optimize``: ``optimize`` cannot survive
its storage failing while it tells a trial's result (a database restart gives ``UnboundLocalError:
'updated_state'``, a full disk ``AssertionError: Should not reach.``, the trial left RUNNING), and it
cannot tell a result before the trial's MLflow run closes. Here:

- a trial is claimed under the study's lock (:mod:`autolr.claim`) and records its owning process;
- while it trains, a thread writes its heartbeat every ``HEARTBEAT_S``;
- the objective stores COMPLETE or PRUNED in Optuna *before* its MLflow run closes (a result that
  could not be stored is never COMPLETE in MLflow); anything raised makes the trial FAIL here,
  Ctrl-C and SIGTERM included (then re-raised);
- storage errors that outlast the retry bound (:mod:`autolr.retry`) or a full disk end the run: the
  trial is failed if the storage still takes that, else its dead owner gets it failed by the next
  process that looks.

A worker that has nothing to claim while others still train waits for them rather than leave: one of
them may die, and its configuration is then retried (once) by whoever is still there.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator

import optuna
from optuna.trial import FrozenTrial, TrialState

from autolr import keys, store
from autolr.claim import ClaimLock, claim
from autolr.errors import LoopContractError
from autolr.retry import StorageFull, StorageUnavailable
from autolr.workers import delivered

__all__ = ["MAX_CONSECUTIVE_FAILS", "fail_interrupted", "grid_exhausted", "run_one", "run_trials"]

logger = logging.getLogger(__name__)

MAX_CONSECUTIVE_FAILS = 3
WAIT_S = 0.5  # between looks at the study while the last trials run elsewhere
INTERRUPTED = "interrupted (Ctrl-C or SIGTERM)"  # the error of a trial a stop signal ended


def run_trials(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    *,
    url: str,
    target: int,
    deadline: float | None,
    grid: bool = False,
    on_trial: Callable[[FrozenTrial], None] | None = None,
) -> None:
    """Run trials one at a time until the study holds ``target`` finished trials or time runs out."""
    lock, fails = ClaimLock(url, study.study_name), 0
    try:
        while deadline is None or time.monotonic() < deadline:
            if grid and grid_exhausted(study):
                break
            trial = claim(study, lock, target)
            if trial is None:  # the target is reached, or the rest are running elsewhere
                if store.n_finished(study) >= target:
                    break
                time.sleep(WAIT_S)
                continue
            try:
                last = run_one(study, trial, objective)
            except KeyboardInterrupt:  # also one landing before run_one's own handler: never left RUNNING
                fail_interrupted(study, trial)
                raise
            except LoopContractError as exc:
                if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
                    raise  # no trial ever returned a value: every one would break it the same way
                logger.warning("trial %d failed: %s", trial.number, exc)  # a loop that returns a value on other paths
                last = study._storage.get_trial(trial._trial_id)
            if on_trial is not None:
                on_trial(last)
            fails = fails + 1 if last.state == TrialState.FAIL else 0
            if fails >= MAX_CONSECUTIVE_FAILS:
                raise RuntimeError(f"{MAX_CONSECUTIVE_FAILS} trials in a row failed; last: {last.user_attrs.get(keys.ERROR, '(see the log above)')}")
    finally:
        lock.close()


def grid_exhausted(study: optuna.Study) -> bool:
    """Every grid point visited and no trial queued: Optuna's grid counts a failed point as visited, so a
    killed or interrupted last point's retry (WAITING) would otherwise never run."""
    sampler = study.sampler
    if not (isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(study)):
        return False
    return not study.get_trials(deepcopy=False, states=(TrialState.WAITING,))


def run_one(study: optuna.Study, trial: optuna.Trial, objective: Callable[[optuna.Trial], float]) -> FrozenTrial:
    """Train one asked trial to its final state in the storage; returns it as stored."""
    with _heartbeat(study, trial):
        try:
            objective(trial)  # stores COMPLETE or PRUNED itself
        except optuna.TrialPruned:
            pass
        except (StorageUnavailable, StorageFull):
            _fail_if_possible(study, trial)
            raise
        except LoopContractError:  # the trial is FAIL with its error (the objective set it); the caller decides the rest
            _fail_if_possible(study, trial)
            raise
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the trial is FAIL and runs again at the next invocation
            delivered()
            fail_interrupted(study, trial)
            raise
        except Exception as exc:  # noqa: BLE001 - a trial's error is the trial's; the study goes on
            logger.warning("trial %d failed: %s: %s", trial.number, type(exc).__name__, exc, exc_info=True)
    told = store.told(trial)  # the objective told COMPLETE or PRUNED: the trial as stored then
    return told if told is not None else study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)


def fail_interrupted(study: optuna.Study, trial: optuna.Trial) -> None:
    """A trial a stop signal ended: FAIL with :data:`INTERRUPTED`, and, when this call is the one that
    failed it, its configuration queued to run once more (:func:`autolr.store.queue_retry`), as a
    killed trial's is: a promising trial that a Ctrl-C or a batch scheduler's SIGTERM cut is not lost
    to the next invocation. Each step may fail (the storage may be what went away)."""
    was_running = False
    with contextlib.suppress(Exception):
        was_running = study._storage.get_trial(trial._trial_id).state == TrialState.RUNNING
    _fail_if_possible(study, trial, INTERRUPTED)
    if was_running:
        with contextlib.suppress(Exception):
            frozen = study._storage.get_trial(trial._trial_id)
            if frozen.state == TrialState.FAIL:
                store.queue_retry(study, frozen, interrupted=True)


def _fail_if_possible(study: optuna.Study, trial: optuna.Trial, why: str | None = None) -> None:
    """FAIL, with ``why`` as its error (``autolr show``'s reason column) where given."""
    if why is not None:
        with contextlib.suppress(Exception):  # a finished trial refuses it; a storage that fails it must not keep the tell from being tried
            trial.set_user_attr(keys.ERROR, why)
    with contextlib.suppress(Exception):  # the storage may be what failed: the trial's dead owner tells later
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)


@contextlib.contextmanager
def _heartbeat(study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
    """The trial's heartbeat every ``HEARTBEAT_S`` while the block runs (a thread; storage errors are
    the retrying storage's to report). The thread is told to stop, not waited for: waking it costs the
    next trial's start ~0.5 ms, and a beat that lands after the trial finished changes nothing (only
    RUNNING trials are judged by their heartbeat)."""
    storage, stop = study._storage, threading.Event()

    def beat() -> None:
        while True:
            with contextlib.suppress(Exception):
                storage.record_heartbeat(trial._trial_id)
            if stop.wait(store.HEARTBEAT_S):
                return

    thread = threading.Thread(target=beat, name=f"autolr-heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
