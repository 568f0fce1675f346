"""``autolr``: a thin shell over the Python API. Parse, one call, print, exit code.

Exit codes: 0 success; 1 the study ran but could not go on (e.g. every trial failing, its storage gone
or full); 2 bad input (one line naming the file, the key and the expected form); 130 interrupted by
Ctrl-C, 143 stopped by SIGTERM (everything finished so far is saved; re-run the same command to resume);
141 the reader of the output left (``| head``), as a shell reports SIGPIPE.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from autolr import __version__
from autolr.config import DEFAULT_TRACKING_URI
from autolr.errors import InputError, StudyFileError, TrackingUnavailableError
from autolr.workers import EXIT_INTERRUPTED, EXIT_TERMINATED, Terminated, delivered, exit_without_teardown

__all__ = ["main"]

EXIT_BROKEN_PIPE = 128 + 13  # SIGPIPE


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose bad flag is one line (``autolr tune: error: argument --trials: ...``,
    exit 2) like every other bad input, not its usage block and then the line; ``-h`` shows the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (usage: {self.prog} -h)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="autolr", description="Tune the learning rate and its schedule.")
    parser.add_argument("--version", action="version", version=f"autolr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def study_command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("study", help="study file (YAML)")
        p.add_argument("--storage", help="Optuna storage URL (default: sqlite beside the study file)")
        p.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI, help=f"MLflow tracking URI (default {DEFAULT_TRACKING_URI})")
        return p

    tune = study_command("tune", "run or resume a study")
    tune.add_argument("--trials", type=_positive_int, help="total target of finished trials (overrides the file)")
    tune.add_argument("--timeout", type=_positive_float, help="stop starting trials after this many seconds")
    tune.add_argument("--jobs", type=_positive_int, default=1, help="worker processes")
    tune.add_argument("--seed", type=_non_negative_int, help="overrides the file's seed")
    tune.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    tune.add_argument("--extend-space", action="store_true", help="let the stored study's search space grow to the file's wider one")

    find = study_command("find-lr", "LR range test on the study's task")
    find.add_argument("--optimizer", help="only this optimizer of the study")
    find.add_argument("--steps", type=_positive_int, help="steps of the range test")
    find.add_argument("--json", action="store_true", help="print one JSON object")

    export = study_command("export", "write the best configuration")
    export.add_argument("--format", choices=("yaml", "json"), default=None, help="default: json for an -o file ending .json, else yaml")
    export.add_argument("-o", "--output", help="file to write (default: stdout)")

    show = study_command("show", "top trials, states, prune reasons")
    show.add_argument("--top", type=_positive_int, default=10)

    compare = sub.add_parser("compare", help="the best configurations of several studies, side by side")
    compare.add_argument("studies", nargs="+", metavar="STUDY", help="study files (YAML)")
    compare.add_argument("--plots", metavar="DIR", help="write the overlays (PNG) into this folder")
    compare.add_argument("--storage", help="Optuna storage URL holding every study (default: each beside its file)")
    compare.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI, help=f"MLflow store to read the best curves from (default {DEFAULT_TRACKING_URI})")
    compare.add_argument("--json", action="store_true", help="print one JSON object")

    ui = sub.add_parser("ui", help="the MLflow UI on 127.0.0.1 over the project's store")
    ui.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI, help=f"the MLflow store to serve (default: {DEFAULT_TRACKING_URI})")
    ui.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default: 5000)")
    return parser


def _number(text: str, kind: type, expected: str, ok) -> int | float:
    """``text`` as a ``kind`` for which ``ok`` holds; else argparse's one line (exit 2), saying what was expected."""
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
    return value


def _positive_int(text: str) -> int:
    return _number(text, int, "an integer >= 1", lambda v: v >= 1)


def _non_negative_int(text: str) -> int:
    return _number(text, int, "an integer >= 0", lambda v: v >= 0)


def _positive_float(text: str) -> float:
    return _number(text, float, "a number of seconds > 0", lambda v: v > 0)


def run() -> NoReturn:
    """The ``autolr`` command (and ``python -m autolr.cli``): :func:`main`, then an exit without the
    interpreter's teardown (:func:`exit_without_teardown`)."""
    exit_without_teardown(main())


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        _quiet_libraries()  # imports: a Ctrl-C in them is an interrupt like any other, not a traceback
        return _COMMANDS[args.command](args)
    except (StudyFileError, InputError, TrackingUnavailableError) as exc:
        print(f"autolr: error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        delivered()
        print("autolr: stopped by SIGTERM; the running trials are marked failed (KILLED in MLflow) and train again (their "
              "configurations, or a confirmation run on its seed) when the same command is re-run to resume; finished trials are saved",
              file=sys.stderr)  # fmt: skip
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print("autolr: interrupted; finished trials are saved, re-run the same command to resume (the interrupted run, a search trial's "
              "configuration or a confirmation run on its seed, trains again)", file=sys.stderr)  # fmt: skip
        return EXIT_INTERRUPTED
    except BrokenPipeError as exc:
        if not _stdout_closed():  # a pipe of the task's own, say: an error like any other
            return _unexpected(exc)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # `autolr show | head`: the reader left
        return EXIT_BROKEN_PIPE
    except RuntimeError as exc:
        print(f"autolr: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - anything else: one line, with where to look
        return _unexpected(exc)


def _unexpected(exc: Exception) -> int:
    """One line, with where to look (the traceback with AUTOLR_DEBUG=1)."""
    logging.getLogger("autolr").debug("unexpected error", exc_info=True)
    print(f"autolr: error: {type(exc).__name__}: {exc} (set AUTOLR_DEBUG=1 for the traceback)", file=sys.stderr)
    if os.environ.get("AUTOLR_DEBUG"):
        raise exc
    return 1


def _stdout_closed() -> bool:
    """Whether standard output is a pipe whose reader has gone (poll reports an error on its end)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & select.POLLERR for _, event in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no fileno (a captured stdout), no poll
        return False


def _quiet_libraries() -> None:
    """Our progress bar and table say what matters; the libraries' INFO lines and notices would drown them."""
    import warnings

    from autolr.progress import AboveTheBar

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported, later
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # its "View run ... at: http://..." would cut the progress bar
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", handlers=[AboveTheBar(sys.stderr)])
    for handler in logging.getLogger().handlers:  # a library that prints its INFO lines itself (Lightning) is not printed twice
        handler.setLevel(max(handler.level, logging.WARNING))
    for name in ("optuna", "mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("optuna.study._optimize").addFilter(_no_interrupt_traceback)  # where Optuna logs a trial's error
    warnings.filterwarnings("ignore", message=r".*(experimental|ExperimentalWarning).*")
    warnings.filterwarnings("ignore", module=r"optuna\..*", category=FutureWarning)
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    except ImportError:  # pragma: no cover
        pass


def _no_interrupt_traceback(record: logging.LogRecord) -> bool:
    """Optuna logs a Ctrl-C inside a trial as a failure with its traceback; autolr says it in one line."""
    return not (record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt)) and "KeyboardInterrupt" not in record.getMessage()


def _tune(args) -> int:
    from autolr import store

    with store.reusing_storages():  # the storage is read before, during and after the trials: opened once
        return _tune_and_report(args)


def _tune_and_report(args) -> int:
    import autolr

    config = autolr.load_study(args.study)
    target = args.trials or config.trials
    finished = _finished_so_far(config, args.storage)
    result = autolr.tune(
        config,
        trials=args.trials,
        timeout_s=args.timeout,
        jobs=args.jobs,
        storage=args.storage,
        tracking_uri=None if args.no_tracking else args.tracking_uri,
        seed=args.seed,
        extend_space=args.extend_space,
    )
    if finished >= target and not result.trial_seconds:  # nothing trained here (a resumed confirmation is training)
        print(f"study {result.study_name} already holds {finished} finished trials, its target being {target}; "
              f"--trials N (or trials: in the study file) runs more", file=sys.stderr)  # fmt: skip
    print(_summary(result))
    for line in (result.short_of_target(target, timeout_s=args.timeout), *result.timing()):
        if line:
            print(line)
    return 0


def _finished_so_far(config, storage: str | None) -> int:
    """Finished trials already stored, so that a resumed study's bar starts where it stands."""
    from optuna.trial import TrialState

    import autolr

    try:
        result = autolr.study_results(config, storage=storage)
    except InputError:  # no such study yet
        return 0
    return result.count(TrialState.COMPLETE) + result.count(TrialState.PRUNED)


def _summary(result, top: int = 5) -> str:
    from optuna.trial import TrialState

    from autolr.confirm import STEP_BACK_TOLERANCE
    from autolr.report import loop_warnings
    from autolr.store import trial_row

    lines = [
        f"study {result.study_name}: {result.count(TrialState.COMPLETE)} complete, "
        f"{result.count(TrialState.PRUNED)} pruned, {result.count(TrialState.FAIL)} failed "
        f"(storage {result.storage})"
    ]
    confirmed = {c.trial: c for c in result.confirmations if c.lr_scale == 1.0}
    rows = _ranked([trial_row(t) for t in result.trials], result.direction)[:top]
    lines.append(_table([dict(r, confirmed=_confirmed(confirmed.get(r["trial"]))) for r in rows], result.metric))
    if len(result.trials) > len(rows):  # pruned and failed trials rank below the complete ones: say where the rest are
        lines.append(f"({len(rows)} of {len(result.trials)} trials, best first; show --top {len(result.trials)} lists them all)")
    searched = _lr_ranges(result.trials)
    if searched:
        lines.append(f"lr searched: {searched}")
    if result.best is not None:
        lines.append(f"best single seed: trial {result.best.number}, {result.metric} = {_fmt(result.best.value)}")
    for back in (c for c in result.confirmations if c.lr_scale != 1.0):
        lines.append(f"step back: trial {back.trial} at {_at(back)}: {_confirmed(back, width=None)}")  # a line of its own: all of it
    winner = result.confirmed
    if winner is not None:
        spread = f" +- {winner.std:.2g} over {len(winner.values)} seeds" if len(winner.values) > 1 else " on 1 fresh seed"
        what = f"trial {winner.trial}" + (f" at {_at(winner)}" if winner.lr_scale != 1.0 else "")
        above = min((c for c in result.confirmations if c.trial == winner.trial and c.lr_scale > winner.lr_scale), key=lambda c: c.lr_scale, default=None)
        better = above is not None and above.mean is not None and (winner.mean < above.mean) == (result.direction == "minimize")
        why = ("; better than the rate above it" if better else
               f"; a step back within {STEP_BACK_TOLERANCE:.0%} and one standard error of the rate above it is preferred: further from where training blows up")  # fmt: skip
        why = why if winner.lr_scale != 1.0 else ""
        lines.append(f"winner on fresh seeds: {what}, {result.metric} = {winner.mean:.4g}{spread} (exported{why})")
    lines += loop_warnings(result.trials)
    return "\n".join(lines)


def _lr_ranges(trials) -> str:
    """Each optimizer's lr range as its latest trial searched it (``lr: auto``: the range test's
    bounds): ``adam 0.000105-0.0318, sgd 0.00123-0.412``."""
    latest = {}
    for t in trials:
        dist = t.distributions.get("lr")
        if dist is not None:
            latest[t.params.get("optimizer", "")] = dist
    return ", ".join(f"{name} {d.low:.3g}-{d.high:.3g}".lstrip() for name, d in sorted(latest.items()))


def _at(c) -> str:
    """A step back's rate: ``0.7x its lr (0.00714)``."""
    lr = (c.params or {}).get("lr")
    return f"{c.lr_scale:g}x its lr" + (f" ({lr:.3g})" if lr is not None else "")


def _confirmed(c, width: int | None = 40) -> str:
    """A configuration's mean over fresh seeds, beside its single-seed value: ``0.0981 +- 0.004 (3)``;
    why it was dropped, cut to ``width`` characters (with an ellipsis) for a table column."""
    if c is None:
        return "-"
    if c.dropped:
        why = c.dropped if width is None or len(c.dropped) <= width else c.dropped[: width - 3] + "..."
        return f"dropped ({why})"
    if not c.values:
        return "pending"
    spread = f" +- {c.std:.2g}" if c.std is not None else ""  # one seed has no spread, not a spread of 0
    return f"{c.mean:.4g}{spread} ({len(c.values)}{'' if c.complete else ' so far'})"


def _ranked(rows: list[dict], direction: str) -> list[dict]:
    order = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "FAIL": 3, "WAITING": 4}
    sign = 1 if direction == "minimize" else -1

    def key(row):
        value = row["value"]
        return (order.get(row["state"], 5), sign * value if value is not None else math.inf, row["trial"])

    return sorted(rows, key=key)


def _table(rows: list[dict], metric: str) -> str:
    headers = ["trial", "state", metric, "fresh seeds", "optimizer", "lr", "schedule", "warmup", "steps", "from", "prune reason / error"]
    body = [
        [str(r["trial"]), r["state"], _fmt(r["value"]), r.get("confirmed", "-"), str(r["optimizer"]), _fmt(r["lr"]), str(r["schedule"]),
         _fmt(r["warmup"]), str(r["steps"] if r["steps"] is not None else "-"), r.get("source") or "-", r["reason"] or ""]
        for r in rows
    ]  # fmt: skip
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(b) for b in body)])


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _export(args) -> int:
    import autolr

    fmt = args.format or ("json" if str(args.output or "").lower().endswith(".json") else "yaml")
    out = None if args.output is None else Path(args.output)
    if out is not None and out.is_dir():
        raise InputError(f"-o {args.output}: expected a file to write, got a folder")
    if out is not None and not out.absolute().parent.is_dir():
        raise InputError(f"-o {args.output}: expected a file in an existing folder, got folder {str(out.absolute().parent)!r}, which does not exist")
    text = autolr.export_best(args.study, storage=args.storage, path=args.output, fmt=fmt)
    if args.output is None:
        sys.stdout.write(text)
    else:
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _show(args) -> int:
    import autolr

    result = autolr.study_results(args.study, storage=args.storage)
    print(_summary(result, top=args.top))
    return 0


def _find_lr(args) -> int:
    import autolr

    report = autolr.find_lr(args.study, optimizer=args.optimizer, steps=args.steps, storage=args.storage, tracking_uri=args.tracking_uri)
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        print(report.describe())
    return 0


def _compare(args) -> int:
    import autolr

    result = autolr.compare(args.studies, plots_dir=args.plots, storage=args.storage, tracking_uri=args.tracking_uri)
    print(json.dumps(result.to_dict()) if args.json else result.table())
    if result.plots and not args.json:
        print("wrote " + ", ".join(str(p) for p in result.plots), file=sys.stderr)
    return 0


# The UI server's keeper: the leader of the server's session, holding the read end of a pipe from
# autolr. When the pipe closes (autolr ended, even by SIGKILL, which nothing can catch) or it gets
# SIGTERM, it stops the whole session: the MLflow server and its uvicorn worker (and MLflow's job
# consumers, where the user turned them on), with a SIGKILL sweep at the end (the server may be gone
# while a worker of its lingers). Its main thread only waits for the pipe, a SIGTERM or the server's
# end, then does the stopping itself: a SIGTERM handler that waited for the server ran inside the
# main thread's own Popen.wait, whose lock it could not take, so the server's end went unseen for the
# whole 10 s grace (every Ctrl-C took 10.4 s).
_KEEPER = """
import os, signal, subprocess, sys, threading
server = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL)
done, asked = threading.Event(), []
signal.signal(signal.SIGTERM, lambda *_: (asked.append(1), threading.Thread(target=done.set).start()))
threading.Thread(target=lambda: (sys.stdin.buffer.read(), asked.append(1), done.set()), daemon=True).start()
threading.Thread(target=lambda: (server.wait(), done.set()), daemon=True).start()
done.wait()
if not asked:
    sys.exit(server.returncode)
os.killpg(0, signal.SIGTERM)
try:
    server.wait(10)
except subprocess.TimeoutExpired:
    pass
os.killpg(0, signal.SIGKILL)
"""


def _ui(args) -> int:
    """The MLflow UI (pages + REST API) on 127.0.0.1 until Ctrl-C; however autolr stops, SIGKILL
    included, the UI and its workers stop with it (they run in a session of their own, whose keeper
    ends it once autolr's pipe to it closes)."""
    import signal
    import socket
    import subprocess

    from autolr.tracking import artifact_root_for

    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", args.tracking_uri, "--host", "127.0.0.1", "--port", str(args.port)]
    cmd += ["--workers", "1"]  # one local user: MLflow's default of 4 only costs start time and memory
    if _has_ui_app():
        cmd += ["--app-name", "autolr"]  # MLflow's app with a script that opens the model-training view
    root = artifact_root_for(args.tracking_uri)
    if root:
        cmd += ["--default-artifact-root", root]
    with socket.socket() as probe:  # say it now, not in a server log line after a misleading banner
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: a closed port in TIME_WAIT is free
        try:
            probe.bind(("127.0.0.1", args.port))
        except OSError as exc:
            print(f"autolr: error: --port {args.port}: 127.0.0.1:{args.port} is not free ({exc.strerror}); choose another port", file=sys.stderr)
            return 2
    print(f"MLflow UI on http://127.0.0.1:{args.port} over {args.tracking_uri} (Ctrl-C to stop)", file=sys.stderr)
    _print_trials_views(args)
    # MLflow's job runner (GenAI scorers and trace rollups: nothing of a training study's) starts a
    # runner and a pool of consumers beside the server, most of the UI's memory, and they take the
    # keeper's 10 s to stop; off unless the user turned it on
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")}
    proc = subprocess.Popen([sys.executable, "-c", _KEEPER, *cmd], start_new_session=True, stdin=subprocess.PIPE, env=env)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        _stop_session(proc)
    print(f"autolr: error: the MLflow UI stopped by itself (exit code {code}); its log is above", file=sys.stderr)
    return code or 1


def _has_ui_app() -> bool:
    """autolr's ``mlflow.app`` entry point is registered (autolr is installed, not only on the path)."""
    from importlib.metadata import entry_points

    return any(ep.name == "autolr" for ep in entry_points(group="mlflow.app"))


def _print_trials_views(args) -> None:
    """Each study's trials, flat and sorted by the objective, in the model-training view: MLflow 3's UI
    opens an experiment in its GenAI view unless the link says otherwise."""
    from autolr.tracking import trials_view_links

    try:
        links = trials_view_links(args.tracking_uri)
    except Exception:  # noqa: BLE001 - the links are a convenience; the UI starts regardless
        return
    for name, path in sorted(links.items()):
        print(f"  {name}: http://127.0.0.1:{args.port}{path}", file=sys.stderr)


def _stop_session(proc) -> None:
    import os
    import signal
    import subprocess

    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM:  # the leader is gone; its workers got the same signal
            return


_COMMANDS = {"tune": _tune, "find-lr": _find_lr, "export": _export, "show": _show, "compare": _compare, "ui": _ui}

if __name__ == "__main__":
    run()
