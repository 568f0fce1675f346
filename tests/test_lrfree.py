"""LR-free optimizers as arms of a study: schedule-free AdamW and Prodigy beside Adam."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

import autolr
from autolr.config import load_study
from autolr.errors import StudyFileError
from autolr.preflight import preflight

STUDY = """
name: lrfree-{optimizer}
task: least_squares
task_args: {{n_samples: 64, n_features: 8, condition: 10}}
train: {{epochs: 2, batch_size: 16}}
trials: 2
sampler: random
confirm: false
search:
  lr: {{low: 1.0e-3, high: 0.3}}
  optimizer: {{{optimizer}: {{}}}}
  schedule: {{constant: {{}}}}
"""


@pytest.mark.parametrize("optimizer, cls", [("schedulefree_adamw", "AdamWScheduleFree"), ("prodigy", "Prodigy"), ("adam", "Adam")])
def test_an_lr_free_arm_runs_tracks_and_exports(write_study, stores, optimizer, cls) -> None:
    pytest.importorskip({"schedulefree_adamw": "schedulefree", "prodigy": "prodigyopt"}.get(optimizer, "torch"))
    path = write_study(STUDY.format(optimizer=optimizer), f"{optimizer}.yaml")
    result = autolr.tune(path, progress=False, **stores)
    assert all(t.state.name == "COMPLETE" for t in result.trials)
    if optimizer == "prodigy":  # its lr multiplies its own estimate: searched around 1, whatever search.lr says
        assert all(0.1 <= t.params["lr"] <= 10 for t in result.trials)
    client = MlflowClient(stores["tracking_uri"])
    exp = client.get_experiment_by_name(f"lrfree-{optimizer}")
    runs = client.search_runs([exp.experiment_id], "tags.`autolr.role` = 'trial'")
    assert {r.data.params["optimizer"] for r in runs} == {optimizer} and all(client.get_metric_history(r.info.run_id, "train_loss") for r in runs)
    best = yaml.safe_load(autolr.export_best(path, storage=stores["storage"]))
    rebuilt = autolr.BestConfig(**{k: best[k] for k in ("study", "metric", "direction", "value", "trial", "params", "epochs", "batch_size")})

    assert type(rebuilt.build_optimizer(torch.nn.Linear(2, 1).parameters())).__name__ == cls


def test_a_missing_package_is_named_before_any_trial(write_study, monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "schedulefree" else real(name, *a))
    config = load_study(write_study(STUDY.format(optimizer="schedulefree_adamw")))
    with pytest.raises(
        StudyFileError, match=r"search.optimizer.schedulefree_adamw: expected the package schedulefree installed \(pip install 'autolr\[lrfree\]'\)"
    ):
        preflight(config)
