"""autolr.range_test on your own model, from Python: any batch structure, your own DataLoader, a model
that computes its own loss, an optimizer factory, a plot."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import autolr
from autolr.tasks import build_task

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # results compared across runs: one thread


class Regression(Dataset):
    """Samples as dicts: a user's own dataset, which the default collate would not pad or rename."""

    def __init__(self, n: int = 96) -> None:
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 6, generator=gen)
        self.y = self.x @ torch.linspace(-1, 1, 6) + 0.1 * torch.randn(n, generator=gen)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return {"features": self.x[i], "target": self.y[i], "id": f"row{i}"}


def collate(samples):
    return {
        "inputs": {"features": torch.stack([s["features"] for s in samples])},
        "target": torch.stack([s["target"] for s in samples]),
        "ids": [s["id"] for s in samples],  # not a tensor: travels as it is
    }


class SelfLossModel(nn.Module):
    """Computes its own loss, as Hugging Face models do."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))

    def forward(self, inputs, target):
        return {"loss": nn.functional.mse_loss(self.net(inputs["features"]).squeeze(-1), target)}


def training_step(model, batch):
    assert isinstance(batch["ids"], list)  # the user's collate, used as it is
    return model(batch["inputs"], batch["target"])["loss"]


def test_a_dict_batch_model_with_its_own_loss_and_loader():
    model = SelfLossModel()
    loader = DataLoader(Regression(), batch_size=16, shuffle=True, collate_fn=collate)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = autolr.range_test(model, optimizer, loader, training_step=training_step, run_steps=200)
    assert 0 < result.suggestion < result.max_stable_lr
    assert result.samples == 16 * result.steps  # the loader's own batch size
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert optimizer.param_groups[0]["lr"] == 1e-3 and not optimizer.state


def test_the_same_loader_gives_the_same_result():
    runs = []
    for _ in range(2):
        loader = DataLoader(Regression(), batch_size=16, shuffle=True, collate_fn=collate)
        runs.append(autolr.range_test(SelfLossModel(), lambda p: torch.optim.Adam(p), loader, training_step=training_step, run_steps=200))
    assert runs[0] == runs[1]


def test_an_optimizer_factory_builds_on_the_models_parameters():
    task = build_task("least_squares", {}, seed=0)
    built = []

    def factory(params):
        built.append(torch.optim.AdamW(params, lr=1e-3))
        return built[-1]

    result = autolr.range_test(task.model, factory, task.train_data, loss_fn=task.loss_fn, batch_size=32, run_steps=200)
    assert len(built) == 1 and built[0].param_groups[0]["params"][0] is next(task.model.parameters())
    assert result.suggestion == pytest.approx(autolr.finder.suggest_lr(result.max_stable_lr, 200, optimizer=built[0], batch_size=32))


def test_full_batch_sgd_on_a_quadratic_finds_two_over_l():
    task = build_task("least_squares", {"max_eig": 4.0}, seed=0)
    x, y = task.train_data.tensors
    optimizer = torch.optim.SGD(task.model.parameters(), lr=1e-3)
    result = autolr.range_test(task.model, optimizer, [(x, y)], loss_fn=task.loss_fn, run_steps=200)  # one batch: full batch
    assert 1.0 <= result.max_stable_lr / (2.0 / 4.0) <= 1.2
    assert result.unstable_lr / result.stable_lr <= 1.1  # full-batch verdicts are bisected to 1.1x


def test_a_full_batch_loader_is_as_good_as_the_tensors():
    task = build_task("least_squares", {}, seed=0)
    optimizer = torch.optim.SGD(task.model.parameters(), lr=1e-3)
    from_loader = autolr.range_test(task.model, optimizer, DataLoader(task.train_data, batch_size=10**6), loss_fn=task.loss_fn, run_steps=200)
    from_tensors = autolr.range_test(task.model, optimizer, task.train_data, loss_fn=task.loss_fn, batch_size=10**6, run_steps=200)
    assert from_loader.max_stable_lr == pytest.approx(from_tensors.max_stable_lr, rel=1e-6)


def test_plot_returns_a_figure_with_a_log_lr_axis():
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    task = build_task("least_squares", {}, seed=0)
    optimizer = torch.optim.SGD(task.model.parameters(), lr=1e-3)
    result = autolr.range_test(task.model, optimizer, task.train_data, loss_fn=task.loss_fn, batch_size=10**6, run_steps=200)
    fig = result.plot()
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert {line.get_xdata()[0] for line in ax.lines[1:]} == {result.suggestion, result.max_stable_lr}
    mine = Figure()
    ax = mine.subplots()
    assert result.plot(ax=ax) is mine  # drawn on the caller's axes


class Pairs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(6, 1)

    def forward(self, x):
        return self.linear(x)


def test_a_batch_that_is_not_inputs_and_targets_needs_training_step():
    loader = DataLoader(Regression(), batch_size=16, collate_fn=collate)
    with pytest.raises(
        TypeError,
        match=r"batch: expected \(inputs, targets\) for loss_fn\(model\(inputs\), targets\), got a dict with keys \['inputs', 'target', 'ids'\]; .* pass training_step=",
    ):
        autolr.range_test(Pairs(), torch.optim.SGD(Pairs().parameters(), lr=0.1), loader, loss_fn=nn.functional.mse_loss)


def test_the_model_is_restored_after_a_bad_batch():
    model = Pairs()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TypeError):
        autolr.range_test(model, torch.optim.SGD(model.parameters(), lr=0.1), [{"x": torch.ones(4, 6)}] * 3, loss_fn=nn.functional.mse_loss)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_the_callers_random_state_is_left_as_it_was():
    task = build_task("least_squares", {}, seed=0)
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    states = torch.random.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    autolr.range_test(task.model, torch.optim.SGD(task.model.parameters(), lr=1e-3), task.train_data, loss_fn=task.loss_fn, batch_size=32, steps=30)
    assert torch.equal(torch.random.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1]) and random.getstate() == states[2]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({}, ValueError, r"loss_fn, training_step: expected one of them, got neither"),
        (
            {"loss_fn": nn.functional.mse_loss},
            ValueError,
            r"batch_size: expected an integer >= 1, got None \(a Dataset needs one; a DataLoader brings its own\)",
        ),
        (
            {"loss_fn": nn.functional.mse_loss, "data": "loader", "batch_size": 8},
            ValueError,
            r"batch_size: expected None for a DataLoader \(its batches are used as they are\), got 8",
        ),
        ({"loss_fn": nn.functional.mse_loss, "data": 3}, TypeError, r"data: expected a Dataset, a DataLoader or an iterable of batches, got a int"),
        ({"loss_fn": nn.functional.mse_loss, "data": []}, ValueError, r"data: expected at least one batch, got an empty list"),
        (
            {"loss_fn": nn.functional.mse_loss, "batch_size": 8, "optimizer": "adam"},
            TypeError,
            r"optimizer: expected a torch.optim.Optimizer or a function params -> optimizer, got a str",
        ),
    ],
)
def test_bad_arguments_say_what_was_expected(kwargs, error, message):
    model = Pairs()
    data = TensorDataset(torch.randn(32, 6), torch.randn(32, 1))
    kwargs = {"data": data, "optimizer": torch.optim.SGD(model.parameters(), lr=0.1), **kwargs}
    if kwargs["data"] == "loader":
        kwargs["data"] = DataLoader(data, batch_size=8)
    with pytest.raises(error, match=message):
        autolr.range_test(model, **kwargs)


def test_range_test_is_part_of_the_public_api():
    assert "range_test" in autolr.__all__
    assert autolr.range_test is autolr.finder.range_test
