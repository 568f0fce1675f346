"""On a GPU machine: does ``--jobs N`` with ``device: cuda`` put each worker on its own GPU?

Runs a small digits study (``device: cuda``, ``--jobs 2``, 6 trials, tracking off) through
``autolr.tune`` with a task that records, from inside its training step, the process and the device
its model's parameters are on. Prints, per process, the devices its trials trained on: worker i
should train on ``cuda:(i % GPUs)`` (worker 0 is the main process, the others are spawned), so with
two or more GPUs the workers' devices differ, and with one GPU they share ``cuda:0``. Each process's
count includes its pre-flight step. On a machine without CUDA it says so and exits 0.

    python bench/gpu_workers.py [--jobs 2] [--trials 6]
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import sys
import tempfile
from pathlib import Path

import torch
from optuna.trial import TrialState

STUDY = """\
name: gpu-workers
task: "gpu_workers:recording_task"
task_args: {{log: "{log}"}}
train: {{epochs: 3, batch_size: 64, device: {device}}}
trials: {trials}
sampler: random
search:
  lr: {{low: 1.0e-4, high: 1.0e-2}}
  optimizer: {{adam: {{}}}}
pruning: {{divergence: true, curve: none}}
confirm: false
"""


def recording_task(log: str, hidden: int = 256):
    """The built-in digits MLP whose training step appends ``PID DEVICE`` to ``log`` once per build
    (once per trial, and once for a process's pre-flight step)."""
    from autolr.tasks import digits_mlp

    task = digits_mlp(hidden=hidden)
    recorded = []

    def training_step(model, batch):
        inputs, target = batch
        if not recorded:
            recorded.append(True)
            with open(log, "a", encoding="utf-8") as out:
                out.write(f"{os.getpid()} {next(model.parameters()).device}\n")
        return task.loss_fn(model(inputs), target)

    return dataclasses.replace(task, training_step=training_step)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of this script's own machinery")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: torch sees no GPU on this machine, nothing to check")
        return 0
    import autolr

    sys.path.insert(0, str(Path(__file__).resolve().parent))  # the workers import recording_task by name
    folder = Path(tempfile.mkdtemp(prefix="autolr-gpu-workers-"))
    log = folder / "devices.txt"
    study = folder / "gpu_workers.yaml"
    study.write_text(STUDY.format(log=log, trials=args.trials, device=args.device), encoding="utf-8")
    result = autolr.tune(study, jobs=args.jobs, tracking_uri=None, progress=False)
    by_process: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in log.read_text(encoding="utf-8").splitlines():
        pid, device = line.split()
        by_process[int(pid)][device] += 1
    gpus = torch.cuda.device_count()
    print(f"{gpus} visible GPU(s): {', '.join(torch.cuda.get_device_name(i) for i in range(gpus))}")
    print(f"study: {result.count(TrialState.COMPLETE)} COMPLETE trials, --jobs {args.jobs}, device {args.device}")
    for pid, counts in by_process.items():
        who = "main process (worker 0)" if pid == os.getpid() else "spawned worker"
        print(f"  pid {pid} {who}: {', '.join(f'{device} x{n}' for device, n in sorted(counts.items()))} (builds: pre-flight + trials)")
    if args.device != "cuda":
        return 0
    expected = {f"cuda:{i % gpus}" for i in range(args.jobs)}
    devices = [set(counts) for counts in by_process.values()]
    spread = len(by_process) == args.jobs and all(len(d) == 1 for d in devices) and set().union(*devices) == expected
    print(f"each worker on its own GPU, {', '.join(sorted(expected))} used: {'yes' if spread else 'NO'}")
    return 0 if spread else 1


if __name__ == "__main__":
    sys.exit(main())
