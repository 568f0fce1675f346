"""An existing plain PyTorch training loop, tuned by autolr through ``loop:`` (see study.yaml).

``fit`` is the loop as it was (DataLoaders, gradient clipping, its own ``evaluate``) plus two lines
for autolr: ``trial.step(loss)`` after ``backward()`` and ``trial.epoch(metrics)`` after each
validation. ``train(trial)`` is what autolr calls once per trial; run as a script, the same ``fit``
retrains with the configuration the study exported:

    autolr tune examples/own_loop/study.yaml
    autolr export examples/own_loop/study.yaml -o best.yaml
    python examples/own_loop/train.py best.yaml

``AUTOLR_EXAMPLE_QUICK=1`` trains 2 epochs on a fifth of the data (the tests use it).
"""

from __future__ import annotations

import os
import sys

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import autolr

QUICK = os.environ.get("AUTOLR_EXAMPLE_QUICK") == "1"
EPOCHS = 2 if QUICK else 12
BATCH_SIZE = 64
GRAD_CLIP = 1.0


def loaders(seed: int = 0) -> tuple[DataLoader, DataLoader]:
    """8x8 handwritten digits (scikit-learn's bundled copy), scaled to [0, 1], a fixed split."""
    x, y = load_digits(return_X_y=True)
    if QUICK:
        x, y = x[:360], y[:360]
    x_train, x_val, y_train, y_val = train_test_split(x / 16.0, y, test_size=0.25, random_state=seed, stratify=y)
    as_set = lambda x, y: TensorDataset(torch.tensor(x, dtype=torch.float32), torch.tensor(y))
    generator = torch.Generator().manual_seed(seed)  # the same batch order in every trial
    return (
        DataLoader(as_set(x_train, y_train), batch_size=BATCH_SIZE, shuffle=True, generator=generator),
        DataLoader(as_set(x_val, y_val), batch_size=256),
    )


def build_model() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.1), nn.Linear(128, 10))


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader) -> dict[str, float]:
    model.eval()
    loss = correct = seen = 0.0
    for x, y in loader:
        out = model(x)
        loss += F.cross_entropy(out, y, reduction="sum").item()
        correct += (out.argmax(1) == y).sum().item()
        seen += len(y)
    model.train()
    return {"val_loss": loss / seen, "val_accuracy": correct / seen}


def fit(model, optimizer, scheduler, train_loader, val_loader, *, epochs: int = EPOCHS, trial: autolr.Trial | None = None) -> dict[str, float]:
    for epoch in range(epochs):
        for x, y in train_loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            if trial is not None:
                trial.step(loss)  # before clipping: the divergence guard sees the raw gradient norm
            nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
            optimizer.step()
            scheduler.step()  # per optimisation step
        metrics = evaluate(model, val_loader)
        if trial is not None:
            trial.epoch(metrics)  # per-epoch tracking and curve pruning (raises autolr.TrialPruned)
        else:
            print(f"epoch {epoch + 1}: val_loss {metrics['val_loss']:.4f}, val_accuracy {metrics['val_accuracy']:.3f}")
    return metrics


def train(trial: autolr.Trial) -> dict[str, float]:
    """One trial: autolr seeds torch, numpy and random first, so every trial starts from the same weights."""
    train_loader, val_loader = loaders()
    model = build_model()
    optimizer = trial.build_optimizer(model)  # the model itself: per-layer statistics get its parameter names
    scheduler = trial.build_scheduler(optimizer, total_steps=EPOCHS * len(train_loader))
    return fit(model, optimizer, scheduler, train_loader, val_loader, trial=trial)  # holds the objective's val_loss


def retrain(best_path: str) -> dict[str, float]:
    """The exported winner in the same loop, without autolr watching."""
    best = autolr.load_best(best_path)
    torch.manual_seed(best.seed)
    train_loader, val_loader = loaders()
    model = build_model()
    optimizer = best.build_optimizer(model.parameters())
    scheduler = best.build_scheduler(optimizer, total_steps=EPOCHS * len(train_loader))
    return fit(model, optimizer, scheduler, train_loader, val_loader)


if __name__ == "__main__":
    path = sys.argv[1] if len(sys.argv) > 1 else "best.yaml"
    retrain(path)
    print(f"the study's best trial reached val_loss {autolr.load_best(path).value:.4f}")
