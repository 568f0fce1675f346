"""autolr.integrations.transformers: a tiny GPT-2 ``Trainer.train`` run as an autolr trial, end to end."""

from __future__ import annotations

import inspect
import json.decoder
import tempfile

import pytest
import torch

transformers = pytest.importorskip("transformers")

from mlflow.tracking import MlflowClient  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

import autolr  # noqa: E402
from autolr import keys  # noqa: E402
from autolr.integrations.transformers import AutolrCallback, optimizers  # noqa: E402

MAX_STEPS, EVAL_STEPS, VOCAB, BLOCK = 30, 10, 64, 16

STUDY = """
name: transformers-tiny
loop: "tests.test_integrations_transformers:train"  # the file names the loop; the tests pass it as loop= too
objective: {metric: val_loss, direction: minimize}
trials: 3
seed: 0
sampler: random
confirm: false  # the search alone: its best trial is the export
search:
  lr: {low: 1.0e-4, high: 1.0e-2}
  optimizer: {adamw: {}}
  schedule: {cosine: {}, constant: {}}
  warmup: {low: 0.0, high: 0.1}
pruning: {divergence: true, curve: median}
"""


def _blocks() -> list[dict[str, torch.Tensor]]:
    """Character-level language modelling on the source of ``json.decoder``: ids are code points mod the vocabulary."""
    ids = torch.tensor([ord(c) % VOCAB for c in inspect.getsource(json.decoder)])
    blocks = ids[: len(ids) // BLOCK * BLOCK].view(-1, BLOCK)
    return [{"input_ids": b, "labels": b} for b in blocks]


BLOCKS = _blocks()
TRAIN, EVAL = BLOCKS[:-64], BLOCKS[-64:]


def _model() -> transformers.GPT2LMHeadModel:
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=VOCAB, n_positions=32))


def _fit(trial, output_dir: str, **overrides) -> transformers.Trainer:
    options = dict(max_steps=MAX_STEPS, eval_strategy="steps", eval_steps=EVAL_STEPS, per_device_train_batch_size=8, per_device_eval_batch_size=32)
    args = transformers.TrainingArguments(output_dir=output_dir, report_to=[], disable_tqdm=True, save_strategy="no", use_cpu=True, **{**options, **overrides})
    model = _model()
    trainer = transformers.Trainer(model=model, args=args, train_dataset=TRAIN, eval_dataset=EVAL,
                                   optimizers=optimizers(trial, model, total_steps=args.max_steps), callbacks=[AutolrCallback(trial)])  # fmt: skip
    trainer.train()
    return trainer


def train(trial: autolr.Trial) -> None:
    """The ``loop:`` under test; returning None makes the last evaluation's val_loss the trial's value."""
    with tempfile.TemporaryDirectory() as output_dir:
        _fit(trial, output_dir)


def _trial_run(tracking_uri: str, number: int):
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("transformers-tiny")
    (run,) = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{keys.TRIAL}` = '{number}'")
    return client, run.info.run_id


def test_tune_a_transformers_loop_records_steps_evaluations_and_exports(write_study, stores, tmp_path) -> None:
    path = write_study(STUDY)
    result = autolr.tune(path, loop=train, trials=3, progress=False, **stores)

    assert len(result.trials) == 3 and {t.state for t in result.trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    best = result.best
    assert best is not None and best.user_attrs[keys.STEPS] == MAX_STEPS
    client, run_id = _trial_run(stores["tracking_uri"], best.number)
    for name in ("train_loss", "lr", "grad_norm"):
        assert [m.step for m in client.get_metric_history(run_id, name)] == list(range(MAX_STEPS)), name
    val_losses = client.get_metric_history(run_id, "val_loss")
    assert [m.step for m in val_losses] == [1, 2, 3]  # one per evaluation (steps 10, 20, 30)
    assert val_losses[-1].value == pytest.approx(best.value, rel=1e-6)

    autolr.export_best(path, storage=stores["storage"], path=tmp_path / "best.yaml")
    loaded = autolr.load_best(tmp_path / "best.yaml")
    assert loaded.params == best.user_attrs[keys.PARAMS] and loaded.value == pytest.approx(best.value)
    optimizer = loaded.build_optimizer(_model().parameters())
    assert optimizer.param_groups[0]["lr"] == pytest.approx(best.user_attrs[keys.PARAMS]["lr"])


def test_a_huge_learning_rate_ends_pruned_as_diverged_within_a_few_steps(write_study, stores) -> None:
    huge = STUDY.replace("lr: {low: 1.0e-4, high: 1.0e-2}", "lr: {low: 1.0e+3, high: 1.0e+4}")
    huge = huge.replace("optimizer: {adamw: {}}", "optimizer: {sgd: {}}").replace("trials: 3", "trials: 1")
    result = autolr.tune(write_study(huge), loop=train, progress=False, **stores)

    (trial,) = result.trials
    assert trial.state == TrialState.PRUNED  # TrialPruned left trainer.train() as itself
    assert trial.user_attrs[keys.PRUNE_REASON].startswith("diverged: ")
    assert trial.user_attrs[keys.STEPS] <= EVAL_STEPS


class RecordingTrial:
    """Stands in for ``autolr.Trial``: what the callback hands it."""

    metric = "val_loss"

    def __init__(self) -> None:
        self.step_losses: list[float] = []
        self.epochs: list[dict[str, float]] = []

    def build_optimizer(self, model):
        return torch.optim.SGD(model.parameters(), lr=0.1)

    def build_scheduler(self, optimizer, total_steps):
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    def step(self, loss) -> None:
        self.step_losses.append(float(loss))

    def epoch(self, metrics) -> None:
        self.epochs.append(dict(metrics))


def test_a_step_reports_the_loss_the_trainer_logs_with_gradient_accumulation(tmp_path) -> None:
    trial = RecordingTrial()
    trainer = _fit(trial, str(tmp_path), max_steps=6, eval_steps=3, gradient_accumulation_steps=2, logging_steps=1)
    logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]

    assert trial.step_losses == pytest.approx(logged, abs=1e-4)  # the Trainer rounds its logged loss to 4 places
    assert len(trial.epochs) == 2 and all(set(m) == {"val_loss"} for m in trial.epochs)
    trainer.evaluate()  # after train(): the user's own evaluation, not a trial epoch
    assert len(trial.epochs) == 2


def test_a_missing_evaluation_metric_fails_with_what_was_evaluated(tmp_path) -> None:
    trial = RecordingTrial()
    trial.metric = "val_accuracy"
    with pytest.raises(ValueError, match=r"expected the objective's metric 'val_accuracy' among the evaluation metrics .* got \[.*'eval_loss'"):
        _fit(trial, str(tmp_path), max_steps=2, eval_steps=2)


def test_a_trainer_that_reseeds_with_another_seed_than_the_trials_is_warned_about_once(tmp_path, caplog, monkeypatch) -> None:
    from autolr.integrations import transformers as integration

    monkeypatch.setattr(integration, "_WARNED_SEED", [])
    trial = RecordingTrial()
    trial.seed = 1000  # a confirmation run's fresh seed
    ours = lambda: [r for r in caplog.records if r.name == integration.__name__]  # noqa: E731
    with caplog.at_level("WARNING", logger=integration.__name__):
        _fit(trial, str(tmp_path), max_steps=2, eval_steps=2, seed=1000)  # as the README says: no warning
        assert not ours()
        _fit(trial, str(tmp_path), max_steps=2, eval_steps=2)  # TrainingArguments' own seed, 42
        _fit(trial, str(tmp_path), max_steps=2, eval_steps=2)
    (record,) = ours()
    assert "TrainingArguments(seed=42) reseeded this run after autolr seeded it with 1000" in record.getMessage()
    assert "pass TrainingArguments(..., seed=trial.seed)" in record.getMessage()
