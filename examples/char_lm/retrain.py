"""Retrain the char LM with the configuration the study exported, in a plain PyTorch loop.

autolr tune examples/char_lm/study.yaml
autolr export examples/char_lm/study.yaml -o best.yaml
python examples/char_lm/retrain.py best.yaml
"""

from __future__ import annotations

import sys

import torch
from char_lm import make, validation_step

import autolr


def retrain(best_path: str) -> dict[str, float]:
    torch.set_num_threads(1)  # a model this small trains fastest on one thread (as autolr runs its trials)
    best = autolr.load_best(best_path)
    torch.manual_seed(best.seed)
    task = make(**best.task_args)  # the same model and data as the tuned trials
    model, loader = task.model, task.train_data
    optimizer = best.build_optimizer(model.parameters())
    scheduler = best.build_scheduler(optimizer, total_steps=best.epochs * len(loader))
    for epoch in range(best.epochs):
        model.train()
        for batch in loader:
            optimizer.zero_grad()
            model(**batch).loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # as the study's train.grad_clip
            optimizer.step()
            scheduler.step()  # per optimisation step, not per epoch
        metrics = evaluate(model, task.val_data)
        print(f"epoch {epoch + 1}: val_loss {metrics['loss']:.3f}, next-char accuracy {metrics['accuracy']:.3f}")
    return metrics


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader) -> dict[str, float]:
    model.eval()
    values = [validation_step(model, batch) for batch in loader]
    return {name: sum(float(v[name]) for v in values) / len(values) for name in ("loss", "accuracy")}


if __name__ == "__main__":
    path = sys.argv[1] if len(sys.argv) > 1 else "best.yaml"
    retrain(path)
    print(f"the study's best trial reached val_loss {autolr.load_best(path).value:.3f}")
