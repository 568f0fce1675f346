"""The trainer: divergence guard, determinism, batching, per-step values, callbacks."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from autolr.batches import Batches
from autolr.guard import Diverged, DivergenceGuard
from autolr.hparams import RunConfig
from autolr.tasks import Task, build_task, least_squares
from autolr.trainer import Trainer, TrainerCallback


class Recorder(TrainerCallback):
    def __init__(self) -> None:
        self.steps: dict[str, list[float]] = {"train_loss": [], "lr": [], "grad_norm": []}
        self.first_steps: list[int] = []
        self.epochs: list[tuple[int, int, dict]] = []
        self.layer_stats: list[tuple[int, dict]] = []

    def on_steps(self, first_step, values) -> None:
        self.first_steps.append(first_step)
        for k, v in values.items():
            self.steps[k].extend(v)

    def on_layer_stats(self, step, stats) -> None:
        self.layer_stats.append((step, dict(stats)))

    def on_epoch_end(self, epoch, step, metrics) -> None:
        self.epochs.append((epoch, step, dict(metrics)))


def _fit(task: Task, run: RunConfig, *, epochs=2, batch_size=64, guard=True, **kwargs):
    rec = Recorder()
    trainer = Trainer(epochs=epochs, batch_size=batch_size, guard=DivergenceGuard() if guard else None, callbacks=[rec], **kwargs)
    opt = run.build_optimizer(task.model.parameters())
    sched = run.build_scheduler(opt, epochs * trainer.steps_per_epoch(task))
    return trainer.fit(task, opt, sched), rec


def test_per_step_values_cover_every_step_and_lr_is_the_rate_used() -> None:
    task = build_task("digits_mlp", {"hidden": 16}, seed=0)
    run = RunConfig("sgd", 0.1, "cosine", warmup=0.1)
    result, rec = _fit(task, run, epochs=2, check_every=5)
    assert result.steps == 2 * math.ceil(1347 / 64) == len(rec.steps["train_loss"]) == len(rec.steps["lr"])
    assert rec.first_steps[0] == 0 and rec.first_steps == sorted(rec.first_steps)
    expected = [run.build_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), result.steps).lr_at(s, 0.1) for s in range(result.steps)]
    assert rec.steps["lr"] == pytest.approx(expected)
    assert all(g > 0 for g in rec.steps["grad_norm"])
    assert [e[0] for e in rec.epochs] == [1, 2] and set(rec.epochs[-1][2]) == {"val_loss", "val_accuracy"}
    assert result.final["val_loss"] < 2.3  # it learned something


def test_same_seed_gives_the_same_value() -> None:
    values = []
    for _ in range(2):
        task = build_task("digits_mlp", {"hidden": 16}, seed=7)
        result, _ = _fit(task, RunConfig("adam", 0.01, "step"), seed=7)
        values.append(result.final["val_loss"])
    assert values[0] == values[1]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_stops_at_that_step(bad: float) -> None:
    task = build_task("digits_mlp", {"hidden": 16}, seed=0)
    base_loss = task.loss_fn
    calls = {"n": 0}

    def loss_fn(out, y):
        calls["n"] += 1
        loss = base_loss(out, y)
        return loss * bad if calls["n"] == 6 else loss  # the 6th step (index 5) is poisoned

    task.loss_fn = loss_fn
    with pytest.raises(Diverged, match=rf"diverged: loss {bad} at step 5") as info:
        _fit(task, RunConfig("sgd", 0.05, "constant"), check_every=4)
    assert info.value.step == 5
    assert calls["n"] <= 8  # noticed within the window, not at the epoch end


def test_huge_lr_diverges_within_a_few_steps_and_reports_the_curve_up_to_it() -> None:
    task = build_task("digits_mlp", {"hidden": 16}, seed=0)
    rec = Recorder()
    trainer = Trainer(epochs=3, batch_size=64, guard=DivergenceGuard(loss_factor=10.0), callbacks=[rec])
    run = RunConfig("sgd", 50.0, "constant")
    opt = run.build_optimizer(task.model.parameters())
    with pytest.raises(Diverged) as info:
        trainer.fit(task, opt, run.build_scheduler(opt, 100))
    assert info.value.step < 10
    assert len(rec.steps["train_loss"]) == info.value.step + 1
    assert "diverged:" in info.value.reason and f"at step {info.value.step}" in info.value.reason


def test_guard_rules() -> None:
    guard = DivergenceGuard(loss_factor=4.0)
    assert guard.check(0, [2.0, 3.0, 7.9], [1.0, 1.0, 1.0]) is None
    d = guard.check(3, [1.0, 8.5], [1.0, 1.0])
    assert d.step == 4 and "4.2x the first step's" in d.reason
    assert DivergenceGuard().check(0, [1.0], [float("nan")]).reason == "diverged: grad_norm nan at step 0"
    with pytest.raises(ValueError, match="loss_factor must be > 1, got 0.5"):
        DivergenceGuard(loss_factor=0.5)


def test_without_guard_training_goes_on() -> None:
    task = least_squares(n_samples=64, n_features=4)
    result, rec = _fit(task, RunConfig("sgd", 3.0, "constant", optimizer_params={"momentum": 0.0}), epochs=5, batch_size=64, guard=False)
    assert result.steps == 5 and rec.steps["train_loss"][-1] > rec.steps["train_loss"][0]


def test_full_batch_when_batch_size_exceeds_the_data() -> None:
    task = least_squares(n_samples=50, n_features=4)
    batches = Batches(task.train_data, 10_000, torch.device("cpu"), seed=0)
    assert len(batches) == 1
    ((x, y),) = list(batches)
    assert x.shape == (50, 4) and torch.equal(x, task.train_data.tensors[0])


def test_tensor_batches_are_a_permutation_of_the_data() -> None:
    x = torch.arange(10.0).reshape(-1, 1)
    batches = Batches(TensorDataset(x, x), 3, torch.device("cpu"), seed=1)
    seen = torch.cat([b[0] for b in batches]).flatten().tolist()
    assert sorted(seen) == list(range(10)) and seen != list(range(10))
    assert [len(b[0]) for b in batches] == [3, 3, 3, 1]


class ListDataset(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def test_generic_datasets_go_through_a_dataloader() -> None:
    task = least_squares(n_samples=40, n_features=3)
    x, y = task.train_data.tensors
    task.train_data = ListDataset(x, y)
    task.val_data = ListDataset(x, y)
    result, rec = _fit(task, RunConfig("sgd", 0.5, "constant"), epochs=3, batch_size=8)
    assert result.steps == 15 and result.history[-1]["val_loss"] < result.history[0]["val_loss"]


def test_layer_stats_every_n_steps() -> None:
    task = build_task("digits_mlp", {"hidden": 16}, seed=0)
    _, rec = _fit(task, RunConfig("sgd", 0.1, "constant"), epochs=1, layer_stats_every=10)
    assert [s for s, _ in rec.layer_stats] == [0, 10, 20]
    stats = rec.layer_stats[0][1]
    assert set(stats) == {
        f"{kind}.{name}" for kind in ("weight_grad_norm", "weight_norm", "weight_update_ratio") for name in ("0.weight", "0.bias", "2.weight", "2.bias")
    }
    # SGD's first update is lr * g (the momentum buffer starts at g): ratio = lr |g| / |w after the step|
    ratio = stats["weight_update_ratio.0.weight"]
    assert ratio == pytest.approx(0.1 * stats["weight_grad_norm.0.weight"] / stats["weight_norm.0.weight"], rel=1e-5)
    assert stats["weight_norm.0.weight"] != pytest.approx(_weight_norm_before(), rel=1e-5)  # it moved


def _weight_norm_before() -> float:
    task = build_task("digits_mlp", {"hidden": 16}, seed=0)
    return float(task.model[0].weight.detach().norm())


def test_batchnorm_cnn_trains_and_evaluates_in_eval_mode() -> None:
    task = build_task("digits_cnn", {"channels": 4}, seed=0)
    result, _ = _fit(task, RunConfig("adam", 0.01, "cosine"), epochs=1)
    assert result.final["val_accuracy"] > 0.5
    assert task.model.training  # handed back in train mode


def test_host_transfers_happen_once_per_window_not_per_step(monkeypatch) -> None:
    """The CUDA path's promise, checked on the CPU: values reach the host once per check window (plus
    once per epoch for validation), never once per step."""
    import os
    import traceback
    from pathlib import Path

    import autolr

    package = str(Path(autolr.__file__).parent) + os.sep  # not "/autolr/": a clone named autolr holds the venv's torch too
    counts = {"n": 0}
    for name in ("item", "tolist", "__float__", "__bool__"):
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, **kwargs):
            # torch's own optimizers read their CPU-side step counter; that never waits on a GPU
            if traceback.extract_stack(limit=2)[0].filename.startswith(package):
                counts["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    task = build_task("digits_mlp", {"hidden": 16}, seed=0)
    task.metrics = {}
    result, _ = _fit(task, RunConfig("adam", 0.01, "cosine"), epochs=2, check_every=16)
    windows = sum(-(-(result.steps // 2) // 16) for _ in range(2))  # per epoch: ceil(steps / 16)
    assert result.steps == 44
    assert counts["n"] <= windows + 2 * 2  # + the validation loss per epoch (and its metric)
