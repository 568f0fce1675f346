"""Tracking overhead: one trial run several ways in one process, interleaved, medians over repeats.

The trial: the built-in ``digits_mlp`` task (8x8 digits, MLP 64-128-10, seed 0), Adam at peak lr 1e-3,
cosine decay with 5% warmup, batch 64, ``EPOCHS`` epochs (22 steps an epoch, ~0.4 ms a step here),
validation each epoch. Torch runs on one thread in every variant (what autolr's worker processes and
tests do; on this 2-core machine a second OpenMP thread makes this model slower, and OpenMP's spinning
threads collapse when any other process wants a core).

1. untracked: a minimal loop - batches, forward, backward, optimizer step, scheduler step, validation
   each epoch. No gradient norm, no divergence guard, no callbacks: the floor, and the denominator.
2. autolr trainer, untracked (informational): autolr's ``Trainer`` with its divergence guard and no
   tracking - what ``autolr tune --no-tracking`` runs.
3. tracked: autolr's ``Trainer`` (global gradient norm every step; per-layer gradient norm, weight norm
   and update ratio every ``LAYER_STATS_EVERY`` = 50 steps; no divergence guard: pruning is not
   tracking, its cost shows in 2.) feeding the objective's ``TrialReport`` callback into a ``TrialRun``:
   per-step ``train_loss``, ``lr`` and ``grad_norm``, the per-layer stats, validation metrics each
   epoch (~1460 points), into an SQLite store in a temporary folder. The timed span runs from creating
   the trial run until ``Tracker.flush()`` returns, i.e. until every point is committed and the run is
   closed: the writer's tail is counted (in a study it would overlap the next trial). Not counted:
   starting the writer process, once per ``autolr tune`` invocation, and the curves plot drawn for each
   trial at the end of the invocation (both reported below).
4. tracked (thread writer, informational): the same with ``Tracker(writer="thread")``.
4b. tracked (public log_batch): the same writer process with its SQL fast path off
   (``Tracker(fast_path=False)``): every point through MLflow's public ``log_batch``. Set beside 3., it
   says what the fast path into MLflow's private tables is worth.
5. naive: the minimal loop plus the global gradient norm and one ``MlflowClient.log_metric`` call per
   point (``train_loss``, ``lr``, ``grad_norm`` each step; validation each epoch), the run created and
   closed inside the timed span. ``NAIVE_REPEATS`` repeats only: it is slow.

4c. tracked (HTTP server), with ``--server`` only: the same writer process sending to a local
   ``mlflow server`` (``--workers 1``, its own SQLite database and artifacts folder in the temporary
   folder, started by this script) over HTTP, MLflow's public ``log_batch``: what a study pays with
   ``--tracking-uri http://...``. The server runs on this machine, so its work competes for the same
   cores (on another machine it would not); its start is not timed.
6. in a row (informational): ``IN_A_ROW`` trials back to back, untracked and tracked, as a study runs them:
   each trial's writer tail overlaps the next trial, and only the end waits for the last points.

The machine is shared: interference from other processes moves a trial's time by 10-30% over a minute.
So the variants run in rounds, one of each per round in a rotating order, and each variant's ratio is
the median over rounds of its time / the untracked time of the same round (drift within a round, a
second or two, is small); the ratio of the variants' median times is printed beside it. The last line
reads ``tracking overhead: R.RRx`` (tracked / untracked, median of the per-round ratios); with
``--server`` the line before it gives the same ratio over HTTP.

    python bench/tracking_overhead.py [--server] [--repeats 31]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch

from autolr.batches import Batches
from autolr.grads import grad_norms
from autolr.guard import DivergenceGuard
from autolr.hparams import RunConfig
from autolr.tasks import build_task
from autolr.tracking import Tracker
from autolr.trainer import Trainer, evaluate
from autolr.trial import TrialReport

EPOCHS = 20
BATCH_SIZE = 64
REPEATS = 31
STUDY_REPEATS = 9
NAIVE_REPEATS = 3
LAYER_STATS_EVERY = 50
CONFIG = RunConfig(optimizer="adam", lr=1e-3, schedule="cosine", warmup=0.05)


def _setup():
    task = build_task("digits_mlp", {}, seed=0)
    steps = EPOCHS * len(Batches(task.train_data, BATCH_SIZE, torch.device("cpu"), seed=0))
    optimizer = CONFIG.build_optimizer(task.model.parameters())
    return task, optimizer, CONFIG.build_scheduler(optimizer, steps)


def untracked() -> float:
    task, optimizer, scheduler = _setup()
    start = time.perf_counter()
    _minimal_loop(task, optimizer, scheduler, on_step=None)
    return time.perf_counter() - start


def _minimal_loop(task, optimizer, scheduler, on_step) -> None:
    model, params = task.model, list(task.model.parameters())
    batches = Batches(task.train_data, BATCH_SIZE, torch.device("cpu"), seed=0)
    step = 0
    for epoch in range(1, EPOCHS + 1):
        for x, y in batches:
            lr = optimizer.param_groups[0]["lr"]
            optimizer.zero_grad(set_to_none=True)
            loss = task.loss_fn(model(x), y)
            loss.backward()
            if on_step is not None:
                on_step(step, loss, lr, params)
            optimizer.step()
            scheduler.step()
            step += 1
        metrics = evaluate(task, task.val_data, torch.device("cpu"))
        if on_step is not None:
            on_step(epoch, None, metrics, params)


class _NoOptuna:
    """The Optuna side of ``TrialReport`` switched off: only the MLflow side is measured."""

    number = 0

    def report(self, value, step) -> None: ...

    def should_prune(self) -> bool:
        return False


def trainer_untracked() -> float:
    task, optimizer, scheduler = _setup()
    start = time.perf_counter()
    Trainer(epochs=EPOCHS, batch_size=BATCH_SIZE, device=torch.device("cpu"), guard=DivergenceGuard()).fit(task, optimizer, scheduler)
    return time.perf_counter() - start


def tracked(tracker: Tracker, parent_run_id: str, number: int, *, wait: bool = True) -> float:
    task, optimizer, scheduler = _setup()
    start = time.perf_counter()
    run = tracker.trial_run(parent_run_id, number, CONFIG.flat())
    with run:
        trainer = Trainer(
            epochs=EPOCHS,
            batch_size=BATCH_SIZE,
            device=torch.device("cpu"),
            guard=None,  # divergence pruning is not tracking: its cost shows in "autolr trainer, untracked"
            callbacks=[TrialReport(_NoOptuna(), run, "val_loss", curve_pruning=False)],
            layer_stats_every=LAYER_STATS_EVERY,
        )
        result = trainer.fit(task, optimizer, scheduler)
        run.end("COMPLETE", {"autolr.value": result.final["val_loss"]})
    if wait and not tracker.flush():
        raise RuntimeError("the writer did not confirm the trial's points")
    return time.perf_counter() - start


def in_a_row(trial, k: int) -> float:
    """Mean time per trial of ``k`` trials back to back, as a study runs them."""
    start = time.perf_counter()
    for i in range(k):
        trial(i)
    return (time.perf_counter() - start) / k


IN_A_ROW = 5


def naive(tracker: Tracker, parent_run_id: str, number: int) -> float:
    client = tracker.client
    task, optimizer, scheduler = _setup()
    start = time.perf_counter()
    run_id = client.create_run(tracker.experiment_id, run_name=f"naive-{number}", tags={"mlflow.parentRunId": parent_run_id}).info.run_id

    def on_step(step, loss, lr, params) -> None:
        if loss is None:  # epoch end: ``lr`` holds the validation metrics
            for key, value in lr.items():
                client.log_metric(run_id, key, value, step=step)
            return
        norm = torch.linalg.vector_norm(torch.stack(grad_norms(params)))
        client.log_metric(run_id, "train_loss", loss.item(), step=step)
        client.log_metric(run_id, "lr", lr, step=step)
        client.log_metric(run_id, "grad_norm", norm.item(), step=step)

    _minimal_loop(task, optimizer, scheduler, on_step=on_step)
    client.set_terminated(run_id)
    return time.perf_counter() - start


def _plot_cost(tracker: Tracker, run_id: str, folder: Path) -> float:
    """What the end of an invocation spends on one trial's curves (read back, plot, log)."""
    from autolr import plots

    start = time.perf_counter()
    series = {key: tracker.metric_history(run_id, key) for key in ("train_loss", "lr", "grad_norm", "val_loss")}
    path = plots.trial_curves(series, title="trial", metric="val_loss", path=folder / "curves.png")
    tracker.log_artifact(run_id, path, "plots")
    return time.perf_counter() - start


@contextlib.contextmanager
def mlflow_server(folder: Path):
    """A local ``mlflow server`` over its own SQLite database; yields its URI, stops it afterwards."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = ["--backend-store-uri", f"sqlite:///{folder}/server.db", "--artifacts-destination", str(folder / "server-artifacts")]
    log = (folder / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", *args, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while not _answers(f"{uri}/health"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start; see {folder / 'server.log'}")
            time.sleep(0.5)
        yield uri
    finally:
        proc.terminate()  # the server's own process; its uvicorn worker follows it
        proc.wait(timeout=30)
        log.close()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - a local http URL
            return True
    except OSError:
        return False


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", action="store_true", help="also measure a tracked trial over HTTP to a local mlflow server")
    parser.add_argument("--repeats", type=int, default=REPEATS, help="rounds of one run of each variant")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # MLflow's "View run at http://..." lines
    logging.basicConfig(level=logging.WARNING)
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp(prefix="autolr-bench-"))
    with contextlib.ExitStack() as stack:
        http_uri = stack.enter_context(mlflow_server(folder)) if args.server else None
        _measure(folder, http_uri, args.repeats, stack)


def _measure(folder: Path, http_uri: str | None, repeats: int, stack: contextlib.ExitStack) -> None:
    order = ["untracked", "autolr trainer, untracked", "tracked", "tracked (public log_batch)", "tracked (thread writer)"]
    process = Tracker(f"sqlite:///{folder}/mlflow.db", experiment="bench")
    thread = Tracker(f"sqlite:///{folder}/mlflow.db", experiment="bench", writer="thread")
    public = Tracker(f"sqlite:///{folder}/mlflow.db", experiment="bench", fast_path=False)
    trackers = {"tracked": process, "tracked (public log_batch)": public, "tracked (thread writer)": thread}
    parents = {}
    if http_uri is not None:
        order.append("tracked (HTTP server)")
        trackers["tracked (HTTP server)"] = http = Tracker(http_uri, experiment="bench")
        parents[http] = stack.enter_context(http.parent_run("bench", params={}, tags={}))
        http.trial_run(parents[http], -6, {}).end("COMPLETE")  # starts its writer
        http.flush()
        tracked(http, parents[http], -7)  # warm-up: the server's first requests
    times: dict[str, list[float]] = {name: [] for name in [*order, "naive"]}
    row: dict[str, list[float]] = {"untracked": [], "tracked": []}
    with process.parent_run("bench", params={}, tags={}) as parent:
        start = time.perf_counter()
        process.trial_run(parent, -1, {}).end("COMPLETE")  # starts the writer process
        process.flush()
        writer_start_s = time.perf_counter() - start
        thread.trial_run(parent, -2, {}).end("COMPLETE")
        thread.flush()
        public.trial_run(parent, -4, {}).end("COMPLETE")
        public.flush()
        untracked(), tracked(process, parent, -3), tracked(public, parent, -5)  # warm-up: allocator, caches, lazy imports
        number = 0
        for r in range(repeats):
            for name in order[r % len(order) :] + order[: r % len(order)]:
                number += 1
                if name == "untracked":
                    times[name].append(untracked())
                elif name == "autolr trainer, untracked":
                    times[name].append(trainer_untracked())
                else:
                    times[name].append(tracked(trackers[name], parents.get(trackers[name], parent), number))
            if r < STUDY_REPEATS:  # a study: each trial's writer tail overlaps the next trial
                row["untracked"].append(in_a_row(lambda i: untracked(), IN_A_ROW))
                number += IN_A_ROW

                def study_trial(i: int, first: int = number) -> float:
                    value = tracked(process, parent, first - i, wait=False)
                    if i == IN_A_ROW - 1 and not process.flush():  # the study's end waits for the last points
                        raise RuntimeError("the writer did not confirm the points")
                    return value

                row["tracked"].append(in_a_row(study_trial, IN_A_ROW))
            if r < NAIVE_REPEATS:
                number += 1
                times["naive"].append(naive(process, parent, number))
        last = process.trial_runs(parent)[number if number in process.trial_runs(parent) else max(process.trial_runs(parent))]
        plot_s = statistics.median(_plot_cost(process, last, folder) for _ in range(3))
    for tracker in trackers.values():
        tracker.close()

    steps = EPOCHS * 22
    base = statistics.median(times["untracked"])
    print(f"trial: digits_mlp, adam + cosine, {EPOCHS} epochs x 22 steps, batch {BATCH_SIZE}, torch threads 1")
    print(f"{'variant':<26}{'median s':>10}{'us/step':>10}{'ratio':>8}{'of medians':>12}  rounds")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"{name:<26}{med:>10.4f}{med / steps * 1e6:>10.1f}{_paired(values, times['untracked']):>8.2f}{med / base:>12.2f}  {len(values)}")
    in_row = _paired(row["tracked"], row["untracked"])
    print(
        f"{IN_A_ROW} trials in a row, as a study runs them (each writer tail overlaps the next trial; "
        f"one wait at the end): tracked / untracked {in_row:.2f}x over {len(row['tracked'])} repeats"
    )
    print(f"not in the trial: writer process start {writer_start_s:.2f} s once per invocation; "
          f"end-of-invocation curves plot {plot_s * 1000:.0f} ms per trial")  # fmt: skip
    fast_vs_public = _paired(times["tracked"], times["tracked (public log_batch)"])
    print(f"fast path / public log_batch, same writer process: {fast_vs_public:.3f}x (median of per-round ratios)")
    if "tracked (HTTP server)" in times:
        print(f"tracking overhead over HTTP (local mlflow server, --workers 1): {_paired(times['tracked (HTTP server)'], times['untracked']):.2f}x")
    print(f"tracking overhead: {_paired(times['tracked'], times['untracked']):.2f}x")


def _paired(times: list[float], baseline: list[float]) -> float:
    """Median over rounds of a variant's time / the baseline's time in the same round."""
    return statistics.median(t / b for t, b in zip(times, baseline))


if __name__ == "__main__":
    sys.exit(main())
