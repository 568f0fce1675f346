"""One contract over every built-in task and every ready study file: each one works as shipped."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from autolr.config import load_study
from autolr.objective import resolve_metric
from autolr.tasks import BUILTIN_TASKS, Task, build_task

STUDIES = sorted((Path(__file__).resolve().parents[1] / "studies").glob("*.yaml"))


@pytest.mark.parametrize("name", sorted(BUILTIN_TASKS))
def test_builtin_task_builds_trains_one_step_and_validates(name: str) -> None:
    task = build_task(name, {}, seed=0)
    assert isinstance(task, Task) and len(task.train_data) > 0 and len(task.val_data) > 0
    x, y = next(iter(DataLoader(task.train_data, batch_size=32)))
    loss = task.loss_fn(task.model(x), y)
    assert loss.ndim == 0 and math.isfinite(loss.item())
    loss.backward()
    grads = [p.grad for p in task.model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    vx, vy = next(iter(DataLoader(task.val_data, batch_size=64)))
    with torch.no_grad():
        out = task.model(vx)
    for metric, fn in task.metrics.items():
        value = fn(out, vy)
        assert isinstance(value, float) and math.isfinite(value), metric


def test_builtin_tasks_are_seeded() -> None:
    first, second = build_task("digits_mlp", {}, seed=3), build_task("digits_mlp", {}, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()))


def test_least_squares_knows_its_optimum() -> None:
    task = build_task("least_squares", {"condition": 10.0}, seed=0)
    assert task.info["optimum"] > 0 and task.info["max_eig"] == 1.0


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_every_ready_study_file_loads_and_its_task_builds(path: Path) -> None:
    config = load_study(path)
    assert config.name and config.trials > 0
    task = build_task(config.task, config.task_args, seed=config.seed)
    assert resolve_metric(config, task).startswith("val_")


def test_the_ready_studies_are_all_there() -> None:
    assert {p.stem for p in STUDIES} >= {"quickstart", "digits_cnn", "wine", "breast_cancer", "diabetes", "classification", "least_squares"}


def test_study_files_know_every_builtin_task_by_name_without_importing_torch() -> None:
    from autolr.config import BUILTIN_TASK_NAMES

    assert set(BUILTIN_TASK_NAMES) == set(BUILTIN_TASKS)


def test_bundled_datasets_are_split_once_and_read_back_without_scikit_learn(tmp_path, monkeypatch) -> None:
    """The built-in tasks keep their split on disk: a later process gets the same tensors without
    importing scikit-learn (and its SciPy), which would cost seconds of every invocation."""
    import subprocess
    import sys

    env = {**os.environ, "AUTOLR_CACHE_DIR": str(tmp_path)}
    probe = ("import sys, torch; from autolr.tasks import digits_mlp; t = digits_mlp(); "
             "print('sklearn' in sys.modules, float(t.train_data.tensors[0].double().sum()), t.val_data.tensors[1][:20].tolist())")  # fmt: skip
    first, second = (subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True).stdout.split(" ", 1) for _ in range(2))
    assert first[0] == "True" and second[0] == "False"  # split by scikit-learn once, then read back
    assert first[1] == second[1]  # the same standardised data, the same validation labels
    assert list((tmp_path / "datasets").iterdir())[0].name.startswith("digits-val0.25-seed0-classes-sklearn")
