"""Worker processes, and the signals that stop a study: SIGTERM is Ctrl-C, in every process.

A batch scheduler stops a job with SIGTERM (then SIGKILL after a grace period). Python's default for
SIGTERM is to die on the spot: the running trial left RUNNING, its MLflow run open, no word said. Here
SIGTERM raises :class:`Terminated`, a ``KeyboardInterrupt``: every path that ends a trial on Ctrl-C ends
it the same way (Optuna FAIL, MLflow run KILLED with its points, the parent run KILLED), and the CLI
says so in one line and exits 143 (128 + 15), as a shell reports a process that SIGTERM ended.

With ``--jobs N`` the trials run in worker processes (spawned: a fresh interpreter each):

- they start with SIGINT and SIGTERM ignored, so a signal during their start-up prints no traceback,
  then take the first SIGINT or SIGTERM as the main process does and ignore any later one (a Ctrl-C
  reaches them from the terminal and from the main process too);
- the main process forwards the signal it got to every worker and waits for them to close their trials;
- a worker whose parent died (even by SIGKILL, which nothing can forward) notices its parent changed
  within ``PARENT_POLL_S`` and stops as on SIGTERM: it never goes on to finish the study alone;
- a worker killed outright loses its trial only: another process fails it and runs it again
  (:func:`autolr.store.fail_stale_trials`), and :func:`run_workers` reports the lost worker;
- a worker that finished ends as the ``autolr`` command does, without the interpreter's teardown
  (:func:`exit_without_teardown`), which the study would otherwise wait ~2 s for.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

__all__ = [
    "EXIT_INTERRUPTED", "EXIT_TERMINATED", "TORCH_THREADS", "Terminated", "WorkerExit", "delivered", "exit_without_teardown",
    "refuse_while_spawning", "run_workers", "sigterm_interrupts", "torch_threads",
]  # fmt: skip

logger = logging.getLogger(__name__)

EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM
PARENT_POLL_S = 0.5
STOP_WAIT_S = 120.0  # a stopping worker closes its trial and its tracker; after this it is killed
RESEND_S = 2.0


# Torch threads of a process running trials (AUTOLR_TORCH_THREADS). The small models tuned on a CPU
# train fastest on one thread, and OpenMP's spinning threads slow down badly when anything else (the
# MLflow writer, another worker) wants a core. Raise it for large models on many cores.
TORCH_THREADS = int(os.environ.get("AUTOLR_TORCH_THREADS", "1"))


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


class Terminated(KeyboardInterrupt):
    """The process got SIGTERM: handled as a Ctrl-C."""


_delivered = threading.Event()  # a raised Terminated reached code that handles it


def delivered() -> None:
    """Say that the stop was caught where it is handled: later stop signals are ignored during the cleanup."""
    _delivered.set()


def _raise_terminated() -> None:
    """Raise Terminated, and send SIGTERM again in ``RESEND_S`` unless it was handled by then: Python
    swallows an exception a signal handler raises inside a garbage-collection callback."""
    if _delivered.is_set():
        return
    timer = threading.Timer(RESEND_S, lambda: None if _delivered.is_set() else os.kill(os.getpid(), signal.SIGTERM))
    timer.daemon = True
    timer.start()
    raise Terminated()


def _raise_once(signum: int, _frame: Any) -> None:
    """A stop signal raises in the main thread; once handled, later ones are ignored while it cleans up."""
    if signum == signal.SIGTERM:
        _raise_terminated()
    elif not _delivered.is_set():
        delivered()  # Ctrl-C: a swallowed one is the user's to repeat
        raise KeyboardInterrupt()


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` in the block (main thread only; put back after). A second
    SIGTERM during the cleanup is ignored; Ctrl-C keeps Python's own handling."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    before = signal.signal(signal.SIGTERM, lambda *_: _raise_terminated())
    hook, sys.unraisablehook = sys.unraisablehook, _quiet_swallowed(sys.unraisablehook)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)
        sys.unraisablehook = hook


def _quiet_swallowed(hook: Callable[[Any], None]) -> Callable[[Any], None]:
    """No "Exception ignored in ..." traceback for a stop signal that landed in a garbage-collection
    callback: it is sent again (:func:`_raise_terminated`)."""
    return lambda unraisable: None if isinstance(unraisable.exc_value, KeyboardInterrupt) else hook(unraisable)


@dataclasses.dataclass(frozen=True)
class WorkerExit:
    """How one worker ended: its exit code (negative: killed by that signal) and its error, if any."""

    index: int
    pid: int
    exitcode: int
    error: str | None = None

    @property
    def lost(self) -> bool:
        """Killed from outside (a signal, or a stop signal meant for it alone), not failed by an error."""
        return self.exitcode < 0 or self.exitcode in (EXIT_INTERRUPTED, EXIT_TERMINATED)

    def describe(self) -> str:
        how = f"killed by {signal.Signals(-self.exitcode).name}" if self.exitcode < 0 else f"stopped (exit code {self.exitcode})"
        return f"worker {self.index} (pid {self.pid}) {how}"


def refuse_while_spawning() -> None:
    """Stop a spawned process that is importing the script which started it (as ``spawn`` does, under
    the name ``__mp_main__``) from running the study again: the script called ``tune(jobs=N)`` (or made
    a spawning DataLoader) outside ``if __name__ == "__main__":``. Without this, the worker ran a
    second whole invocation of its own, or died in multiprocessing's bootstrap, and the study ended
    with "worker 1: exit code 1". One line, exit 1, before anything is opened."""
    if getattr(multiprocessing.current_process(), "_inheriting", False):  # what multiprocessing's own check reads
        main = getattr(sys.modules.get("__mp_main__"), "__file__", None) or "the script"
        raise SystemExit(f"autolr: error: {main} calls autolr.tune at import, and a process it spawned (one of tune(jobs=N)'s "
                         'workers, or a DataLoader\'s) imports it: put the call under `if __name__ == "__main__":`')  # fmt: skip


def run_workers(target: Callable[..., None], args: list[tuple], *, poll: Callable[[], None], here: Callable[[], None] | None = None) -> list[WorkerExit]:
    """Run ``target(*args[i])`` in one spawned process per entry until all have ended, calling ``poll``
    about every half second meanwhile; ``here``, when given, runs in this process meanwhile (worker 0:
    the spawned ones are numbered from 1). On Ctrl-C or SIGTERM the signal is forwarded to the workers,
    which are waited for, and the interrupt re-raised; on an error here they are stopped with SIGTERM."""
    ctx = multiprocessing.get_context("spawn")
    errors = ctx.SimpleQueue()
    first = 0 if here is None else 1
    procs = [ctx.Process(target=_worker_main, args=(target, os.getpid(), errors, first + i, a), daemon=False) for i, a in enumerate(args)]
    with _ignoring_stop_signals():  # inherited through exec: no KeyboardInterrupt while a worker imports
        for p in procs:
            p.start()
    try:
        if here is not None:
            here()
        while any(p.is_alive() for p in procs):
            time.sleep(0.5)
            poll()
    except KeyboardInterrupt as exc:
        _stop(procs, signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)
        raise
    except BaseException:
        _stop(procs, signal.SIGTERM)
        raise
    finally:
        for p in procs:
            p.join()
    messages = {}
    while not errors.empty():
        index, message = errors.get()
        messages[index] = message
    return [WorkerExit(first + i, p.pid, p.exitcode, messages.get(first + i)) for i, p in enumerate(procs)]


@contextlib.contextmanager
def _ignoring_stop_signals() -> Iterator[None]:
    before = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _stop(procs: list, sig: int) -> None:
    """Signal the workers still alive (again every few seconds: one may have been starting up), then
    kill those that did not stop within ``STOP_WAIT_S``."""
    deadline = time.monotonic() + STOP_WAIT_S
    while time.monotonic() < deadline and any(p.is_alive() for p in procs):
        for p in procs:
            if p.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, sig)
        for p in procs:
            p.join(timeout=max(0.0, min(2.0, deadline - time.monotonic())))
    for p in procs:
        if p.is_alive():
            logger.error("worker pid %d did not stop within %.0f s of the signal; killing it", p.pid, STOP_WAIT_S)
            p.kill()


def _worker_main(target: Callable[..., None], parent_pid: int, errors, index: int, args: tuple) -> None:
    """A worker process: stop signals as in the main process, a watch on the parent, one line for an error."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _raise_once)
    sys.unraisablehook = _quiet_swallowed(sys.unraisablehook)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="autolr-parent-watch", daemon=True).start()
    try:
        target(*args)
    except Terminated:
        delivered()
        sys.exit(EXIT_TERMINATED)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:  # noqa: BLE001 - one line to the main process, which says it
        logger.debug("worker %d failed", index, exc_info=True)
        errors.put((index, str(exc) if isinstance(exc, RuntimeError) else f"{type(exc).__name__}: {exc}"))
        sys.exit(1)
    exit_without_teardown(0)  # the study waits for its workers to end


def exit_without_teardown(code: int) -> NoReturn:
    """End the process with ``code`` once all an exit must do is done, skipping the rest.

    At interpreter exit Python frees every object of every module one by one: with torch, MLflow,
    SQLAlchemy and Optuna loaded that takes ~2 s on this project's machines (``bench/fixed_cost.py``),
    a third of a one-trial ``autolr tune``, and frees nothing the ending process needs (a ``--jobs``
    worker's teardown held up the end of its study as long). So, as CLIs
    that load big libraries do: every atexit handler runs (the SQLite stores' WAL checkpoint, the
    trackers' last writes, worker processes joined, logging flushed), stdout and stderr are flushed,
    and the process ends with ``os._exit``. Where a non-daemon thread still runs (the usual exit would
    wait for it), or ``code`` is not an exit status (``sys.exit`` prints a message, exits 0 for None),
    the usual exit is taken.
    """
    main_thread = threading.main_thread()
    if not isinstance(code, int) or any(t is not main_thread and not t.daemon and t.is_alive() for t in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe: nothing left to say to it
            stream.flush()
    os._exit(code)


def _watch_parent(parent_pid: int) -> None:
    """SIGTERM to this process once its parent is gone (re-parented: ``getppid`` changed)."""
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_S)
    logger.warning("the main autolr process (pid %d) is gone; stopping this worker", parent_pid)
    os.kill(os.getpid(), signal.SIGTERM)
