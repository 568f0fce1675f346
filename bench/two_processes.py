"""Two ``autolr tune`` processes on one PostgreSQL study, round after round: does every round end with
both processes exit 0 and exactly the study's target of finished trials?

Each round is a fresh study (its own name) on the PostgreSQL database, started as two machines would
start it: two processes at once, each from its own folder with its own copy of the study file,
``--storage postgresql://...``, MLflow tracking into each folder's own SQLite store. After both
exit, the round counts the study's trials by state: target exactly reached, nothing RUNNING or
WAITING, and (informational) how many trials each process ran. The study is deleted afterwards.

    python bench/two_processes.py [--rounds 10] [--trials 10] [--postgres URL]

The last line: ``R of N rounds: both processes exit 0 and exactly T trials finished``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import optuna

POSTGRES_URL = os.environ.get("AUTOLR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
STUDY = """\
name: {name}
task: digits_mlp
task_args: {{hidden: 32}}
train: {{epochs: 3, batch_size: 64}}
trials: {trials}
search: {{lr: {{low: 1.0e-4, high: 0.05}}, optimizer: {{sgd: {{momentum: 0.9}}, adam: {{}}}}, schedule: {{constant: {{}}, cosine: {{}}}}}}
pruning: {{curve: none}}
confirm: false
"""


def one_round(url: str, trials: int) -> tuple[bool, str]:
    name = f"two-{uuid.uuid4().hex[:8]}"
    root = Path(tempfile.mkdtemp(prefix="autolr-two-"))
    procs = []
    start = time.perf_counter()
    for machine in ("a", "b"):
        folder = root / machine
        folder.mkdir()
        (folder / "study.yaml").write_text(STUDY.format(name=name, trials=trials))
        cmd = [sys.executable, "-m", "autolr.cli", "tune", "study.yaml", "--storage", url]
        procs.append(subprocess.Popen(cmd, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    codes = [p.wait(timeout=900) for p in procs]
    errors = [p.stderr.read()[-400:] for p, c in zip(procs, codes) if c != 0]
    study = optuna.load_study(study_name=name, storage=url)
    states = Counter(t.state.name for t in study.get_trials(deepcopy=False))
    owners = Counter(str(t.user_attrs.get("autolr.owner", {}).get("pid")) for t in study.get_trials(deepcopy=False))
    finished = states["COMPLETE"] + states["PRUNED"]
    ok = codes == [0, 0] and finished == trials and not states["RUNNING"] and not states["WAITING"]
    optuna.delete_study(study_name=name, storage=url)
    line = f"exit codes {codes}, states {dict(states)}, trials per process {sorted(owners.values())}, {time.perf_counter() - start:.0f} s"
    return ok, line + ("" if not errors else f"; stderr: {errors}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--postgres", default=POSTGRES_URL)
    args = parser.parse_args()
    good = 0
    for r in range(args.rounds):
        ok, line = one_round(args.postgres, args.trials)
        good += ok
        print(f"round {r + 1}: {'ok  ' if ok else 'FAIL'} {line}", flush=True)
    print(f"{good} of {args.rounds} rounds: both processes exit 0 and exactly {args.trials} trials finished")


if __name__ == "__main__":
    main()
