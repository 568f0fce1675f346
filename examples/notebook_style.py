"""Notebook style: the model, a task factory and a training loop defined right here, tuned with
``autolr.tune(..., task=make)`` and ``autolr.tune(..., loop=train)`` (callables, no module to name).
Each block below is one notebook cell; in a notebook, drop the ``if __name__ == "__main__":`` line.

    python examples/notebook_style.py           # about a minute on 2 cores

The two study files beside this script hold the search; their ``task:``/``loop:`` is the callable
passed to ``autolr.tune``. ``AUTOLR_EXAMPLE_QUICK=1`` runs 2 trials of each (the tests use it);
``--storage``/``--tracking-uri`` choose the stores (``--no-tracking``: no MLflow), ``--out`` the folder for the exported winners.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from sklearn.datasets import load_wine
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import autolr

HERE = Path(__file__).resolve().parent
QUICK = os.environ.get("AUTOLR_EXAMPLE_QUICK") == "1"
EPOCHS = 30  # of the loop below; the task's epochs are in notebook_style_task.yaml


# --- cell 1: data and model ------------------------------------------------------------------------
def wine() -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's bundled wine data (178 samples, 13 features, 3 classes), standardised."""
    x, y = load_wine(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    scaler = StandardScaler().fit(x_train)
    as_set = lambda x, y: TensorDataset(torch.tensor(scaler.transform(x), dtype=torch.float32), torch.tensor(y))
    return as_set(x_train, y_train), as_set(x_val, y_val)


def build_model(hidden: int = 32) -> nn.Module:
    return nn.Sequential(nn.Linear(13, hidden), nn.ReLU(), nn.Linear(hidden, 3))


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    return (outputs.argmax(1) == targets).float().mean().item()


# --- cell 2: a task factory, for autolr's trainer ----------------------------------------------------
def make(hidden: int = 32) -> autolr.Task:
    train_set, val_set = wine()
    return autolr.Task(model=build_model(hidden), train_data=train_set, val_data=val_set, loss_fn=F.cross_entropy, metrics={"accuracy": accuracy})


# --- cell 3: or your own training loop -------------------------------------------------------------
def train(trial: autolr.Trial) -> dict[str, float]:
    train_set, val_set = wine()
    loader = DataLoader(train_set, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    model = build_model()
    optimizer = trial.build_optimizer(model)
    scheduler = trial.build_scheduler(optimizer, total_steps=EPOCHS * len(loader))
    for _ in range(EPOCHS):
        for x, y in loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            trial.step(loss)  # divergence guard, per-step train_loss / lr / grad_norm
            optimizer.step()
            scheduler.step()
        with torch.no_grad():
            out, target = model(val_set.tensors[0]), val_set.tensors[1]
            metrics = {"val_loss": F.cross_entropy(out, target).item(), "val_accuracy": accuracy(out, target)}
        trial.epoch(metrics)  # per-epoch tracking, curve pruning
    return metrics


# --- cell 4: tune both, export the winners, rebuild them ---------------------------------------------
def tune_and_rebuild(study_file: Path, out: Path, stores: dict, **code) -> None:
    result = autolr.tune(study_file, trials=2 if QUICK else None, progress=not QUICK, **stores, **code)
    print(f"{result.study_name}: best single-seed trial {result.best.number}, {result.metric} = {result.best.value:.4g}")
    print("  the configuration export names:", result.winner_params)  # the confirmed winner (or its step back)
    # export_best reads the study file, which names no task: hand it the callable again (see examples/README.md)
    config = autolr.load_study(study_file, **code)
    best_path = out / f"best-{result.study_name}.yaml"
    autolr.export_best(config, storage=stores["storage"], path=best_path)
    best = autolr.load_best(best_path)
    model = build_model()
    optimizer = best.build_optimizer(model.parameters())
    scheduler = best.build_scheduler(optimizer, total_steps=100)
    print(
        f"  rebuilt from {best_path.name}: {type(optimizer).__name__} at lr {optimizer.param_groups[0]['lr']:.4g}, {type(scheduler).__name__}({best.params['schedule']})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", help="Optuna storage URL (default: sqlite beside each study file)")
    parser.add_argument("--tracking-uri", default="sqlite:///mlruns/mlflow.db", help="MLflow tracking URI (default: %(default)s)")
    parser.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    parser.add_argument("--out", type=Path, default=Path.cwd(), help="folder for the exported best configurations (default: here)")
    args = parser.parse_args()
    stores = {"storage": args.storage, "tracking_uri": None if args.no_tracking else args.tracking_uri}
    tune_and_rebuild(HERE / "notebook_style_task.yaml", args.out, stores, task=make)
    tune_and_rebuild(HERE / "notebook_style_loop.yaml", args.out, stores, loop=train)
