"""Scale-out: trials per minute of ``autolr tune --jobs 1`` and ``--jobs 2``, side by side in one run.

Each run is a fresh study (its own name and folder) run by the CLI in its own process, as a user runs
it: ``autolr tune study.yaml --jobs N`` on the default SQLite storage beside the study file (and, when
PostgreSQL answers, with ``--storage postgresql...``), MLflow tracking on (the default store under
``mlruns/`` of the run's folder), confirmation off (``confirm: false``: its runs would follow the
search on one worker). The study: the built-in ``digits_mlp`` task (hidden 256), Adam with a
constant or cosine schedule, lr in [1e-4, 1e-2] (nothing diverges, so every trial trains its whole
budget of ``EPOCHS`` x 90 steps at batch 16, about 2 s), no curve pruning: both arms run the same
amount of work per trial.

Three figures per run, from the trials' start and end times in the Optuna storage:
- all training (the headline): the throughput while every one of the N processes trains, i.e. from
  the first moment N trials run at once to the last: trials finished in that window (a trial cut
  by the window's edges counts for the share of it inside) / its length. Gaps between trials
  (sampler, storage) are inside it; the start-up of a spawned worker (its imports and pre-flight,
  about 10 s of CPU here, while the main process already trains) and the tail where one process
  finishes the last trial alone are not: they are fixed costs of an invocation, not of a trial.
  With the default 40 trials that window holds ~34 trials (~20 s); with 16 it held ~10 (~5 s), and
  the same code read 1.52x-2.19x from round to round;
- trials phase: finished trials / (last trial's end - first trial's start), start-up of the spawned
  worker included;
- invocation: finished trials / the process's wall time (imports, pre-flight, the end's plots
  included), what a user waits for a study this short.

The arms alternate within each round (1 then 2 workers, then 2 then 1 in the next round) and each
ratio is the median over rounds of 2-worker / 1-worker trials per minute in the same round; the
machine's 1-minute load average is printed beside every run (other processes on a shared machine
take cores from the workers); so is the CPU time of all the invocation's processes. The last line:
``2 workers / 1: R.RRx trials per minute (...)``, all training, for the default SQLite storage.

    python bench/scaling.py [--repeats 3] [--trials 12] [--epochs 20] [--postgres URL | --no-postgres]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import optuna

EPOCHS = 20
TRIALS = 40  # with 16, both workers trained together for ~5 s a run (~10 trials): rounds spread 1.5x-2.2x
REPEATS = 3
POSTGRES_URL = os.environ.get("AUTOLR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
STUDY = """\
name: {name}
task: digits_mlp
task_args: {{hidden: 256}}
train: {{epochs: {epochs}, batch_size: 16}}
objective: {{metric: val_loss, direction: minimize}}
trials: {trials}
seed: 0
sampler: tpe
search:
  lr: {{low: 1.0e-4, high: 1.0e-2}}
  optimizer: {{adam: {{}}}}
  schedule: {{constant: {{}}, cosine: {{}}}}
pruning: {{divergence: true, curve: none}}
confirm: false
"""
CLI = "import sys; from autolr.cli import main; sys.exit(main(sys.argv[1:]))"


@dataclasses.dataclass(frozen=True)
class Run:
    jobs: int
    trials: int
    phase_s: float  # first trial's start to last trial's end
    busy_trials: float  # trials finished while all ``jobs`` processes trained (a cut trial counts for its share)
    busy_s: float  # how long all ``jobs`` processes trained at once
    wall_s: float  # the whole ``autolr tune`` process
    load: float  # 1-minute load average when the run started
    cpu_s: float  # CPU time of every process of the invocation (main, workers, MLflow writers)

    @property
    def per_minute(self) -> float:
        return 60.0 * self.trials / self.phase_s

    @property
    def per_minute_busy(self) -> float:
        return 60.0 * self.busy_trials / self.busy_s

    @property
    def per_minute_wall(self) -> float:
        return 60.0 * self.trials / self.wall_s


def run_study(folder: Path, jobs: int, *, storage: str | None, trials: int, epochs: int) -> Run:
    """One fresh study run by ``autolr tune --jobs N`` in its own process, from its own folder."""
    name = f"scaling-{uuid.uuid4().hex[:8]}"
    workdir = folder / name
    workdir.mkdir()
    path = workdir / "study.yaml"
    path.write_text(STUDY.format(name=name, trials=trials, epochs=epochs), encoding="utf-8")
    args = ["tune", str(path), "--jobs", str(jobs), *(["--storage", storage] if storage else [])]
    load, before = os.getloadavg()[0], _children_cpu_s()
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CLI, *args], cwd=workdir, env=_env(), capture_output=True, text=True)
    wall_s = time.perf_counter() - start
    cpu_s = _children_cpu_s() - before  # every descendant was waited for, so its time is in here
    if done.returncode != 0:
        raise RuntimeError(f"autolr tune --jobs {jobs} exited {done.returncode}:\n{done.stderr[-3000:]}")
    url = storage or f"sqlite:///{workdir / (name + '.db')}"  # the default: beside the study file
    finished = [t for t in optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False) if t.state.name in ("COMPLETE", "PRUNED")]
    if storage:
        optuna.delete_study(study_name=name, storage=url)  # the shared database keeps no bench studies
    phase_s = (max(t.datetime_complete for t in finished) - min(t.datetime_start for t in finished)).total_seconds()
    spans = [(t.datetime_start.timestamp(), t.datetime_complete.timestamp()) for t in finished]
    busy_trials, busy_s = all_training(spans, jobs)
    return Run(jobs, len(finished), phase_s, busy_trials, busy_s, wall_s, load, cpu_s)


def all_training(spans: list[tuple[float, float]], jobs: int) -> tuple[float, float]:
    """(trials finished, seconds) from the first moment ``jobs`` trials ran at once to the last."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans], key=lambda e: (e[0], e[1]))
    running, first, last = 0, None, None
    for when, step in events:
        if running == jobs and step < 0:
            last = when  # a full stretch ends here
        running += step
        if running == jobs and first is None:
            first = when
    if first is None or last is None or last <= first:
        raise RuntimeError(f"never {jobs} trials at once: {spans}")
    inside = sum(max(0.0, min(end, last) - max(start, first)) / (end - start) for start, end in spans if end > start)
    return inside, last - first


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "PYTHONUNBUFFERED": "1"}


def _postgres(url: str) -> str | None:
    """The URL when the database answers, else None (said why)."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("select 1"))
        engine.dispose()
    except Exception as exc:  # noqa: BLE001 - any failure means: no PostgreSQL arm
        print(f"PostgreSQL not reachable at {url} ({type(exc).__name__}): SQLite only")
        return None
    return url


def measure(label: str, storage: str | None, *, repeats: int, trials: int, epochs: int, folder: Path) -> list[tuple[Run, Run]]:
    """``repeats`` rounds of one 1-worker and one 2-worker run, in alternating order."""
    rounds = []
    for r in range(repeats):
        runs = {}
        for jobs in (1, 2) if r % 2 == 0 else (2, 1):
            runs[jobs] = run_study(folder, jobs, storage=storage, trials=trials, epochs=epochs)
            run = runs[jobs]
            print(f"{label:<10} round {r + 1}  --jobs {jobs}: {run.trials} trials; all training {run.busy_trials:4.1f} trials in {run.busy_s:5.1f} s "
                  f"({run.per_minute_busy:5.1f}/min); trials phase {run.phase_s:5.1f} s "
                  f"({run.per_minute:5.1f}/min), invocation {run.wall_s:6.1f} s ({run.per_minute_wall:5.1f}/min), "
                  f"CPU {run.cpu_s:5.1f} s, load {run.load:.2f}", flush=True)  # fmt: skip
        rounds.append((runs[1], runs[2]))
    return rounds


def summary(label: str, rounds: list[tuple[Run, Run]]) -> str:
    def ratios(figure) -> list[float]:
        return [figure(two) / figure(one) for one, two in rounds]

    def said(values: list[float]) -> str:
        return f"{statistics.median(values):.2f}x ({', '.join(f'{x:.2f}x' for x in values)})"

    busy = {jobs: statistics.median(pair[jobs - 1].per_minute_busy for pair in rounds) for jobs in (1, 2)}
    cpu = {jobs: statistics.median(pair[jobs - 1].cpu_s / pair[jobs - 1].trials for pair in rounds) for jobs in (1, 2)}
    print(f"{label}: trials per minute, all training: 1 worker {busy[1]:.1f}, 2 workers {busy[2]:.1f}; 2 workers / 1, "
          f"trials phase: {said(ratios(lambda r: r.per_minute))}; invocation: {said(ratios(lambda r: r.per_minute_wall))}; "
          f"CPU s per trial, all processes: 1 worker {cpu[1]:.2f}, 2 workers {cpu[2]:.2f}")  # fmt: skip
    runs = ratios(lambda r: r.per_minute_busy)
    return f"2 workers / 1: {statistics.median(runs):.2f}x trials per minute ({label}, all training, median of {len(rounds)}; runs: {', '.join(f'{x:.2f}x' for x in runs)})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--trials", type=int, default=TRIALS)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--postgres", default=POSTGRES_URL, help="PostgreSQL storage URL for the second arm")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"study: digits_mlp (hidden 256), {args.epochs} epochs x 90 steps at batch 16, {args.trials} trials a run, "
          f"tracking on, confirm off; {os.cpu_count()} cores; load {os.getloadavg()[0]:.2f} at the start", flush=True)  # fmt: skip
    folder = Path(tempfile.mkdtemp(prefix="autolr-scaling-"))
    storages = {"sqlite": None}
    postgres = None if args.no_postgres else _postgres(args.postgres)
    if postgres:
        storages = {"postgresql": postgres, **storages}  # the default storage last: its line ends the output
    lines = [
        summary(label, measure(label, url, repeats=args.repeats, trials=args.trials, epochs=args.epochs, folder=folder)) for label, url in storages.items()
    ]
    print(f"load {os.getloadavg()[0]:.2f} at the end")
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
