"""autolr.integrations.lightning: a Lightning ``fit`` run as an autolr trial, end to end through ``autolr.tune``."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch")

from mlflow.tracking import MlflowClient  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

import autolr  # noqa: E402
from autolr import keys  # noqa: E402
from autolr.integrations.lightning import AutolrCallback, configure_optimizers  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning", "ignore:.*LeafSpec")

EPOCHS, BATCHES_PER_EPOCH = 3, 8

STUDY = """
name: lightning-tiny
loop: "tests.test_integrations_lightning:train"  # the file names the loop; the tests pass it as loop= too
train: {epochs: 3, batch_size: 32}
objective: {metric: val_loss, direction: minimize}
trials: 3
seed: 0
sampler: random
confirm: false  # the search alone: its best trial is the export
search:
  lr: {low: 1.0e-3, high: 1.0e-1}
  optimizer: {adam: {}, sgd: {momentum: 0.9}}
  schedule: {cosine: {}, constant: {}}
  warmup: {low: 0.0, high: 0.1}
pruning: {divergence: true, curve: median}
"""


def _loaders(seed: int = 0) -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32 * BATCHES_PER_EPOCH + 64, 8, generator=g)
    y = x @ torch.randn(8, 1, generator=g) + 0.1 * torch.randn(len(x), 1, generator=g)
    train, val = TensorDataset(x[:-64], y[:-64]), TensorDataset(x[-64:], y[-64:])
    return DataLoader(train, batch_size=32, shuffle=True, generator=g), DataLoader(val, batch_size=32)


class TinyModule(pl.LightningModule):
    def __init__(self, trial) -> None:
        super().__init__()
        self.trial = trial
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        self.train_losses: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.train_losses.append(loss.item())
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        return configure_optimizers(self.trial, self)


def _trainer(trial, **kwargs) -> pl.Trainer:
    options = dict(max_epochs=EPOCHS, accelerator="cpu", enable_progress_bar=False, logger=False, enable_checkpointing=False, enable_model_summary=False)
    return pl.Trainer(callbacks=[AutolrCallback(trial)], **{**options, **kwargs})


def train(trial: autolr.Trial) -> float:
    """The ``loop:`` under test, as a user would write it."""
    trainer = _trainer(trial)
    trainer.fit(TinyModule(trial), *_loaders())
    return trainer.callback_metrics["val_loss"].item()


def _trial_run(tracking_uri: str, number: int):
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("lightning-tiny")
    (run,) = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{keys.TRIAL}` = '{number}'")
    return client, run.info.run_id


def test_tune_a_lightning_loop_records_steps_epochs_and_exports(write_study, stores, tmp_path) -> None:
    path = write_study(STUDY)
    result = autolr.tune(path, loop=train, trials=3, progress=False, **stores)

    assert len(result.trials) == 3 and {t.state for t in result.trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    best = result.best
    assert best is not None and best.user_attrs[keys.STEPS] == EPOCHS * BATCHES_PER_EPOCH
    client, run_id = _trial_run(stores["tracking_uri"], best.number)
    for name in ("train_loss", "lr", "grad_norm"):
        assert [m.step for m in client.get_metric_history(run_id, name)] == list(range(EPOCHS * BATCHES_PER_EPOCH)), name
    val_losses = client.get_metric_history(run_id, "val_loss")
    assert [m.step for m in val_losses] == [1, 2, 3]  # one per epoch, the sanity check not among them
    assert val_losses[-1].value == pytest.approx(best.value, rel=1e-6)

    autolr.export_best(path, storage=stores["storage"], path=tmp_path / "best.yaml")
    loaded = autolr.load_best(tmp_path / "best.yaml")
    assert loaded.params == best.user_attrs[keys.PARAMS] and loaded.value == pytest.approx(best.value)
    optimizer = loaded.build_optimizer(torch.nn.Linear(2, 1).parameters())
    assert optimizer.param_groups[0]["lr"] == pytest.approx(best.user_attrs[keys.PARAMS]["lr"])


def test_a_huge_learning_rate_ends_pruned_as_diverged_within_a_few_steps(write_study, stores) -> None:
    huge = STUDY.replace("lr: {low: 1.0e-3, high: 1.0e-1}", "lr: {low: 1.0e+3, high: 1.0e+4}")
    huge = huge.replace("optimizer: {adam: {}, sgd: {momentum: 0.9}}", "optimizer: {sgd: {}}").replace("trials: 3", "trials: 1")
    result = autolr.tune(write_study(huge), loop=train, progress=False, **stores)

    (trial,) = result.trials
    assert trial.state == TrialState.PRUNED  # TrialPruned left trainer.fit as itself, not wrapped
    assert trial.user_attrs[keys.PRUNE_REASON].startswith("diverged: ")
    assert trial.user_attrs[keys.STEPS] <= BATCHES_PER_EPOCH


class RecordingTrial:
    """Stands in for ``autolr.Trial``: what the callback hands it, and when."""

    metric = "val_loss"

    def __init__(self) -> None:
        self.step_losses: list[float] = []
        self.epochs: list[dict[str, float]] = []

    def build_optimizer(self, module):
        return torch.optim.SGD(module.parameters(), lr=0.01)

    def build_scheduler(self, optimizer, total_steps):
        self.total_steps = total_steps
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    def step(self, loss) -> None:
        self.step_losses.append(float(loss))

    def epoch(self, metrics) -> None:
        self.epochs.append(dict(metrics))


def test_with_gradient_accumulation_a_step_reports_the_mean_loss_of_its_batches() -> None:
    trial, module = RecordingTrial(), None
    module = TinyModule(trial)
    _trainer(trial, accumulate_grad_batches=2).fit(module, *_loaders())

    assert trial.total_steps == EPOCHS * BATCHES_PER_EPOCH // 2  # estimated_stepping_batches
    pairs = [(a + b) / 2 for a, b in zip(module.train_losses[::2], module.train_losses[1::2])]
    assert trial.step_losses == pytest.approx(pairs, rel=1e-5)
    assert len(trial.epochs) == EPOCHS and all(set(m) == {"val_loss"} for m in trial.epochs)


def test_a_missing_validation_metric_fails_with_what_was_logged() -> None:
    trial = RecordingTrial()
    trial.metric = "val_accuracy"
    with pytest.raises(ValueError, match=r"expected the objective's metric 'val_accuracy' among the validation metrics, got \['val_loss'\]"):
        _trainer(trial, max_epochs=1).fit(TinyModule(trial), *_loaders())


def test_configure_optimizers_needs_total_steps_without_a_trainer() -> None:
    with pytest.raises(ValueError, match="expected total_steps, or a LightningModule attached to a Trainer"):
        configure_optimizers(RecordingTrial(), TinyModule(None))


class ScheduleFreeTrial(RecordingTrial):
    def build_optimizer(self, module):
        import schedulefree

        optimizer = schedulefree.AdamWScheduleFree(module.parameters(), lr=0.01)
        optimizer.train()
        return optimizer


class ModeRecordingModule(TinyModule):
    """Records the optimizer's mode at each training and validation step."""

    def __init__(self, trial) -> None:
        super().__init__(trial)
        self.modes: dict[str, set[bool]] = {"train": set(), "val": set()}

    def training_step(self, batch, batch_idx):
        self.modes["train"].add(self.trainer.optimizers[0].param_groups[0]["train_mode"])
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        if self.trainer.optimizers:  # the sanity check runs before configure_optimizers
            self.modes["val"].add(self.trainer.optimizers[0].param_groups[0]["train_mode"])
        return super().validation_step(batch, batch_idx)


def test_a_schedule_free_optimizer_is_validated_at_its_eval_weights_and_trains_at_its_train_weights() -> None:
    pytest.importorskip("schedulefree")
    trial = ScheduleFreeTrial()
    module = ModeRecordingModule(trial)
    trainer = _trainer(trial)
    trainer.fit(module, *_loaders())

    assert module.modes == {"train": {True}, "val": {False}}
    assert len(trial.epochs) == EPOCHS
    (optimizer,) = trainer.optimizers
    optimizer.eval()  # the user's own choice after fit (to save the averaged weights): a validate() leaves it alone
    trainer.validate(module, _loaders()[1], verbose=False)
    assert optimizer.param_groups[0]["train_mode"] is False
