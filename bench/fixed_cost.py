"""What one invocation of ``autolr tune`` costs beyond its training.

1. One 1-epoch trial (digits MLP, tracking on, confirmation off) added to an existing study by
   ``autolr tune``, against the bare ``python -c "import torch, optuna, mlflow"``: the two commands
   run one after the other in each round, rounds repeated; the figure is the median of the per-round
   ratios (goal: at most 2x).
2. The quickstart study (``studies/quickstart.yaml``, 24 trials + confirmation) in a fresh folder: the
   share of the time from the first trial's start to the command's exit spent in trials, as
   ``autolr tune`` prints it (goal: at least 90%), per run; and, from the trials' stored start and
   end times, the median gap between two search trials and between two confirmation runs.

``--baseline DIR`` runs every measurement also with the autolr package of another checkout (e.g.
``git worktree add /tmp/base HEAD~3``), alternating with this one in each round, so a change is
measured against what it replaces under the same load.

    python bench/fixed_cost.py [--rounds 5] [--quickstarts 2] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ONE_TRIAL = """
name: fixed-cost
task: digits_mlp
train: {epochs: 1, batch_size: 64}
trials: 1
seed: 0
confirm: false
search:
  lr: {low: 1.0e-3, high: 1.0e-1}
  optimizer: {adam: {}}
  schedule: {constant: {}}
"""


def timed(cmd: list[str], cwd: Path, code: Path | None = None) -> tuple[float, str]:
    """Run ``cmd`` in ``cwd`` (with the autolr package of checkout ``code`` first on the path, when given)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(code) if code else "", os.environ.get("PYTHONPATH", "")])))
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=True, env=env)
    return time.perf_counter() - start, done.stdout + done.stderr


def one_trial_rounds(rounds: int, folder: Path, codes: dict[str, Path | None]) -> dict[str, list[float]]:
    autolr = [sys.executable, "-m", "autolr.cli", "tune", "one.yaml", "--trials"]
    for name, code in codes.items():  # the existing study (and the stores) each version adds trials to
        (folder / name).mkdir()
        (folder / name / "one.yaml").write_text(ONE_TRIAL)
        timed([*autolr, "1"], folder / name, code)
    ratios: dict[str, list[float]] = {name: [] for name in codes}
    for i in range(rounds):
        for name, code in codes.items():
            imports, _ = timed([sys.executable, "-c", "import torch, optuna, mlflow"], folder)
            tune, _ = timed([*autolr, str(i + 2)], folder / name, code)
            ratios[name].append(tune / imports)
            print(f"round {i + 1} {name}: bare imports {imports:.2f} s, autolr tune (one 1-epoch trial) {tune:.2f} s: {tune / imports:.2f}x", flush=True)
    return ratios


def quickstart_share(folder: Path, name: str, code: Path | None) -> tuple[float, float, float | None]:
    """The share ``autolr tune`` prints, and the median gaps (ms) between search trials and between
    confirmation runs, from the trials' stored times."""
    shutil.copy(ROOT / "studies" / "quickstart.yaml", folder / "quickstart.yaml")
    seconds, out = timed([sys.executable, "-m", "autolr.cli", "tune", "quickstart.yaml"], folder, code)
    line = next(line for line in out.splitlines() if line.startswith("time in trials:"))
    share = float(re.search(r"\((\d+)%\)", line).group(1)) / 100
    search, confirm = (_median_gap_ms(f"sqlite:///{folder / 'quickstart.db'}", study) for study in ("quickstart", "quickstart.confirm"))
    confirm_text = f", between confirmation runs {confirm:.1f} ms" if confirm is not None else ""
    print(f"quickstart {name}: {line} (command: {seconds:.1f} s); median gap between search trials {search:.1f} ms{confirm_text}", flush=True)
    return share, search, confirm


def _median_gap_ms(url: str, study_name: str) -> float | None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        trials = optuna.load_study(study_name=study_name, storage=url).trials
    except KeyError:  # no such study (confirmation off)
        return None
    done = sorted((t for t in trials if t.datetime_start and t.datetime_complete), key=lambda t: t.datetime_start)
    gaps = [(b.datetime_start - a.datetime_complete).total_seconds() * 1000 for a, b in zip(done, done[1:])]
    return statistics.median(gaps) if gaps else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quickstarts", type=int, default=2)
    parser.add_argument("--baseline", type=Path, help="another checkout whose autolr package runs alternated with this one")
    args = parser.parse_args()
    codes: dict[str, Path | None] = {"this": None}
    if args.baseline:
        if not (args.baseline / "autolr" / "__init__.py").exists():
            parser.error(f"--baseline {args.baseline}: expected a checkout holding autolr/__init__.py")
        codes = {"baseline": args.baseline.resolve(), "this": None}
    with tempfile.TemporaryDirectory(prefix="autolr-fixed-cost-") as tmp:
        ratios = one_trial_rounds(args.rounds, Path(tmp), codes)
    runs: dict[str, list[tuple[float, float, float | None]]] = {name: [] for name in codes}
    for _ in range(args.quickstarts):
        for name, code in codes.items():
            with tempfile.TemporaryDirectory(prefix="autolr-quickstart-") as tmp:
                runs[name].append(quickstart_share(Path(tmp), name, code))
    for name in codes:
        label = f" ({name})" if len(codes) > 1 else ""
        if ratios[name]:  # --rounds 0: the quickstarts alone
            median, worst = statistics.median(ratios[name]), max(ratios[name])
            print(f"one 1-epoch trial / bare imports{label}: median {median:.2f}x, worst {worst:.2f}x over {len(ratios[name])} rounds (goal <= 2x)")
        if runs[name]:
            shares, gaps = [r[0] for r in runs[name]], [r[1] for r in runs[name]]
            print(f"quickstart time in trials{label}: median {statistics.median(shares):.0%}, worst {min(shares):.0%} over {len(shares)} runs "
                  f"(goal >= 90%); median gap between search trials {min(gaps):.1f}-{max(gaps):.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
