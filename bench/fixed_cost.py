"""What one invocation of ``autolr tune`` costs beyond its training.

1. One 1-epoch trial (digits MLP, tracking on, confirmation off) added to an existing study by
   ``autolr tune``, against the bare ``python -c "import torch, optuna, mlflow"``: the two commands
   run one after the other in each round, rounds repeated; the figure is the median of the per-round
   ratios (goal: at most 2x).
2. The quickstart study (``studies/quickstart.yaml``, 24 trials + confirmation) in a fresh folder: the
   share of the time from the first trial's start to the command's exit spent in trials, as
   ``autolr tune`` prints it (goal: at least 90%), per run.

    python bench/fixed_cost.py [--rounds 5] [--quickstarts 2]
"""

from __future__ import annotations

import argparse
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


def timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, done.stdout + done.stderr


def one_trial_rounds(rounds: int, folder: Path) -> list[float]:
    (folder / "one.yaml").write_text(ONE_TRIAL)
    autolr = [sys.executable, "-m", "autolr.cli", "tune", "one.yaml", "--trials"]
    timed([*autolr, "1"], folder)  # the existing study (and the stores) this bench adds trials to
    ratios = []
    for i in range(rounds):
        imports, _ = timed([sys.executable, "-c", "import torch, optuna, mlflow"], folder)
        tune, _ = timed([*autolr, str(i + 2)], folder)
        ratios.append(tune / imports)
        print(f"round {i + 1}: bare imports {imports:.2f} s, autolr tune (one 1-epoch trial) {tune:.2f} s: {tune / imports:.2f}x", flush=True)
    return ratios


def quickstart_share(folder: Path) -> float:
    shutil.copy(ROOT / "studies" / "quickstart.yaml", folder / "quickstart.yaml")
    seconds, out = timed([sys.executable, "-m", "autolr.cli", "tune", "quickstart.yaml"], folder)
    line = next(line for line in out.splitlines() if line.startswith("time in trials:"))
    share = float(re.search(r"\((\d+)%\)", line).group(1)) / 100
    print(f"quickstart: {line} (command: {seconds:.1f} s)", flush=True)
    return share


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quickstarts", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="autolr-fixed-cost-") as tmp:
        ratios = one_trial_rounds(args.rounds, Path(tmp))
    shares = []
    for _ in range(args.quickstarts):
        with tempfile.TemporaryDirectory(prefix="autolr-quickstart-") as tmp:
            shares.append(quickstart_share(Path(tmp)))
    print(f"one 1-epoch trial / bare imports: median {statistics.median(ratios):.2f}x, worst {max(ratios):.2f}x over {len(ratios)} rounds (goal <= 2x)")
    if shares:
        print(f"quickstart time in trials: median {statistics.median(shares):.0%}, worst {min(shares):.0%} over {len(shares)} runs (goal >= 90%)")


if __name__ == "__main__":
    main()
