"""One contract over every optimizer: it builds from defaults, takes each declared parameter, and
descends on a quadratic at a small rate."""

from __future__ import annotations

import pytest
import torch

from autolr.optimizers import OPTIMIZERS, build_optimizer


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_contract_builds_with_defaults_and_descends(name: str) -> None:
    w = torch.nn.Parameter(torch.tensor([3.0, -2.0]))
    opt = build_optimizer(name, [w], 0.05)
    assert opt.param_groups[0]["lr"] == 0.05
    if hasattr(opt, "train"):  # schedule-free: steps in train mode
        opt.train()
    start = float((w**2).sum())
    for _ in range(20):
        opt.zero_grad()
        (w**2).sum().backward()
        opt.step()
    assert float((w**2).sum()) < start


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_contract_every_declared_parameter_reaches_torch(name: str) -> None:
    spec = OPTIMIZERS[name]
    values = {p.name: (not p.default if p.kind is bool else p.kind(p.default * 0.5 if p.default else 0.01)) for p in spec.params}
    if name == "sgd":
        values["momentum"] = 0.5  # nesterov needs momentum
    opt = build_optimizer(name, [torch.nn.Parameter(torch.zeros(1))], 0.1, values)
    group = opt.param_groups[0]
    for key, value in values.items():
        if key in ("beta1", "beta2"):
            assert group["betas"][("beta1", "beta2").index(key)] == pytest.approx(value)
        else:
            assert group[key] == pytest.approx(value), key


def test_sgd_nesterov_without_momentum_falls_back_to_plain_sgd() -> None:
    opt = build_optimizer("sgd", [torch.nn.Parameter(torch.zeros(1))], 0.1, {"momentum": 0.0, "nesterov": True})
    assert opt.param_groups[0]["nesterov"] is False


def test_unknown_names_are_rejected_with_the_choices() -> None:
    with pytest.raises(
        ValueError, match=r"unknown optimizer 'adagrad'; expected one of \['adam', 'adamw', 'prodigy', 'rmsprop', 'schedulefree_adamw', 'sgd'\]"
    ):
        build_optimizer("adagrad", [torch.nn.Parameter(torch.zeros(1))], 0.1)
    with pytest.raises(ValueError, match=r"optimizer 'adam' has no parameter\(s\) \['momentum'\]; expected \['beta1', 'beta2', 'eps', 'weight_decay'\]"):
        build_optimizer("adam", [torch.nn.Parameter(torch.zeros(1))], 0.1, {"momentum": 0.9})


def test_lr_free_optimizers_keep_their_conventions() -> None:
    """Prodigy's lr scales its own step-size estimate (searched around 1); schedule-free AdamW is
    switched to eval for validation and back by the trainer."""
    from torch.utils.data import TensorDataset

    import autolr
    from autolr.trainer import Trainer

    assert OPTIMIZERS["prodigy"].lr_range == (0.1, 10.0) and OPTIMIZERS["schedulefree_adamw"].lr_range is None
    modes = []
    data = TensorDataset(torch.randn(32, 4), torch.randn(32, 1))
    task = autolr.Task(model=torch.nn.Linear(4, 1), train_data=data, val_data=data, loss_fn=torch.nn.functional.mse_loss)
    opt = build_optimizer("schedulefree_adamw", task.model.parameters(), 0.01)
    for mode in ("train", "eval"):
        original = getattr(opt, mode)
        setattr(opt, mode, lambda original=original, mode=mode: (modes.append(mode), original())[1])
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    Trainer(epochs=2, batch_size=16, device=torch.device("cpu")).fit(task, opt, scheduler)
    assert modes == ["train", "eval", "train", "eval", "train"]
