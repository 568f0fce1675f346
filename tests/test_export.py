"""Reading exports back: what a user's script depends on."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

import autolr
from autolr.hparams import RunConfig
from autolr.optimizers import build_optimizer

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
    assert best.task == "digits_mlp" and best.extra == {}  # typed fields, not extra
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    model[0].requires_grad_(False)  # frozen: left out, as trial.build_optimizer(model) leaves it
    trained = best.build_optimizer(model).param_groups[0]["params"]  # a model, as the trial's own build took it
    assert [p.shape for p in trained] == [p.shape for p in model[1].parameters()]


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_an_adam_export_with_exponents_loads_back(tmp_path, fmt) -> None:
    """JSON writes Adam's eps as 1e-08 and a small rate as 5e-05; YAML 1.1 would read both as strings
    (a hand-edited best.yaml too); the export's reader reads them as the study files' reader does."""
    params = {"optimizer": "adam", "lr": 5e-05, "schedule": "constant", "warmup": 0.0, "beta1": 0.9, "beta2": 0.999, "eps": 1e-08, "weight_decay": 0.0}
    export = {**EXPORT, "params": params}
    path = tmp_path / f"best.{fmt}"
    path.write_text(json.dumps(export, indent=2) if fmt == "json" else yaml.safe_dump(export).replace("1.0e-08", "1e-8"))
    best = autolr.load_best(path)
    group = best.build_optimizer([torch.nn.Parameter(torch.zeros(1))]).param_groups[0]
    assert group["eps"] == 1e-08 and group["lr"] == 5e-05 and best.params == params


def test_a_string_that_looks_like_a_number_stays_a_string(tmp_path) -> None:
    """The export's YAML quotes what load_best would otherwise read as a number: a task argument "1e5"."""
    from autolr.export import to_yaml

    path = tmp_path / "best.yaml"
    path.write_text(to_yaml({**EXPORT, "task_args": {"vocab": "1e5", "size": 2e-05}}))
    assert autolr.load_best(path).task_args == {"vocab": "1e5", "size": 2e-05}


def test_load_best_rejects_what_is_not_an_export(tmp_path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("study: s\nvalue: 1\n")
    with pytest.raises(
        ValueError, match=r"x.yaml: expected the keys .* of an autolr export; missing \['metric', 'direction', 'trial', 'params', 'epochs', 'batch_size'\]"
    ):
        autolr.load_best(path)
    path.write_text(json.dumps({**EXPORT, "params": {**EXPORT["params"], "gama": 0.5}}))
    with pytest.raises(ValueError, match=r"params: \['gama'\] belong to neither 'sgd' nor 'step'"):
        autolr.load_best(path)
    path.write_text(json.dumps({**EXPORT, "params": {**EXPORT["params"], "optimizer": "sgdd"}}))  # not "momentum ... belong to neither"
    with pytest.raises(ValueError, match=r"x.yaml: optimizer: expected one of \[.*'sgd'\], got 'sgdd'"):
        autolr.load_best(path)


def test_run_config_validates() -> None:
    with pytest.raises(ValueError, match=r"params: lr expected a number in \[1e-12, 1e\+06\], got 0"):
        RunConfig("sgd", 0, "constant")
    with pytest.raises(ValueError, match=r"schedule: expected one of \[.*\], got 'linear'"):
        RunConfig("sgd", 0.1, "linear")


@pytest.mark.parametrize(
    "flat, words",
    [
        ({"momentum": 1.5}, r"momentum expected a number in \[0, 0.9999\], got 1.5"),
        ({"warmup": 0.95}, r"warmup expected a number in \[0, 0.9\], got 0.95"),
        ({"lr": 1e300}, r"lr expected a number in \[1e-12, 1e\+06\], got 1e\+300"),
        ({"nesterov": "yes"}, r"nesterov expected true or false, got 'yes'"),
    ],
)
def test_bounds_are_enforced_at_every_entry_with_the_study_files_words(tmp_path, flat, words) -> None:
    params = {"optimizer": "sgd", "lr": 0.1, "schedule": "cosine", **flat}
    path = tmp_path / "best.yaml"
    path.write_text(yaml.safe_dump({"study": "s", "metric": "val_loss", "direction": "minimize", "value": 1.0,
                                    "trial": 0, "params": params, "epochs": 1, "batch_size": 8}))  # fmt: skip
    with pytest.raises(ValueError, match=rf"best.yaml: .*{words}"):
        autolr.load_best(path)
    with pytest.raises(ValueError, match=words):
        RunConfig.from_flat(params)
    if "lr" in flat or "momentum" in flat:
        with pytest.raises(ValueError, match=words):
            build_optimizer("sgd", torch.nn.Linear(2, 1).parameters(), params["lr"], {"momentum": params.get("momentum", 0.9)})


def test_the_export_holds_the_mechanics_that_shaped_the_tuned_run(write_study, stores, tmp_path) -> None:
    path = write_study("""
        name: mechanics
        task: least_squares
        train: {epochs: 3, batch_size: 32, accumulate: 2, max_steps: 7, grad_clip: 1.0}
        trials: 1
        confirm: false
        search: {lr: {low: 1.0e-3, high: 0.1}}
    """)
    autolr.tune(path, progress=False, storage=stores["storage"], tracking_uri=None)
    out = tmp_path / "best.yaml"
    autolr.export_best(path, storage=stores["storage"], path=out)
    best = autolr.load_best(out)
    assert best.total_steps == 7  # max_steps, not epochs x batches
    assert best.train == {"accumulate": 2, "max_steps": 7, "grad_clip": 1.0, "precision": "fp32"}
