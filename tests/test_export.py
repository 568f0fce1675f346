"""Reading exports back: what a user's script depends on."""

from __future__ import annotations

import json

import pytest
import torch

import autolr
from autolr.hparams import RunConfig

EXPORT = {
    "study": "s", "metric": "val_loss", "direction": "minimize", "value": 0.1, "trial": 3,
    "params": {"optimizer": "sgd", "lr": 0.2, "schedule": "step", "warmup": 0.1, "momentum": 0.8,
               "nesterov": True, "weight_decay": 0.0, "step_frac": 0.25, "gamma": 0.5},
    "epochs": 4, "batch_size": 32, "total_steps": 40, "task": "digits_mlp",
}  # fmt: skip


def test_load_best_rebuilds_optimizer_and_schedule(tmp_path) -> None:
    path = tmp_path / "best.json"
    path.write_text(json.dumps(EXPORT))
    best = autolr.load_best(path)
    w = torch.nn.Parameter(torch.zeros(2))
    opt = best.build_optimizer([w])
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["momentum"] == 0.8 and opt.param_groups[0]["nesterov"] is True
    sched = best.build_scheduler(opt)  # total_steps from the export
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.2 * (i + 1) / 5 for i in range(4)])  # 4 warmup steps
    assert lrs[4] == pytest.approx(0.2) and lrs[-1] == pytest.approx(0.2 * 0.5**3)
    assert best.extra == {"task": "digits_mlp"}


def test_load_best_rejects_what_is_not_an_export(tmp_path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("study: s\nvalue: 1\n")
    with pytest.raises(ValueError, match=r"x.yaml: expected the keys .* of an autolr export; missing \['metric', 'direction', 'trial', 'params', 'epochs', 'batch_size'\]"):
        autolr.load_best(path)
    path.write_text(json.dumps({**EXPORT, "params": {**EXPORT["params"], "gama": 0.5}}))
    with pytest.raises(ValueError, match=r"params: \['gama'\] belong to neither 'sgd' nor 'step'"):
        autolr.load_best(path)


def test_run_config_validates() -> None:
    with pytest.raises(ValueError, match="lr: expected a number > 0, got 0"):
        RunConfig("sgd", 0, "constant")
    with pytest.raises(ValueError, match=r"schedule: expected one of \[.*\], got 'linear'"):
        RunConfig("sgd", 0.1, "linear")
