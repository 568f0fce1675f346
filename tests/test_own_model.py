"""Your own model: dict batches, a model that computes its own loss, your own DataLoader, several inputs,
iterable data; precision, accumulation and a step budget; a pre-flight that names the hook to write."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

import autolr
from autolr.cli import main
from autolr.config import load_study
from autolr.errors import StudyFileError
from autolr.preflight import preflight
from autolr.trainer import Trainer

# A module the study files name, written beside them (a study file's folder is importable).
MODELS = '''
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
import autolr


class SelfLoss(nn.Module):
    """Computes its own loss from a dict batch, as Hugging Face models do."""

    def __init__(self, vocab=12, dim=16):
        super().__init__()
        self.embed, self.head = nn.Embedding(vocab, dim), nn.Linear(dim, vocab)

    def forward(self, input_ids, labels=None):
        logits = self.head(self.embed(input_ids))
        loss = None if labels is None else nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
        return {"loss": loss, "logits": logits}


def collate(rows):
    ids = torch.stack([r for r in rows])
    return {"input_ids": ids[:, :-1], "labels": (ids[:, 1:] + 0)}


def _loader(n, seed, shuffle):
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, 12, (n, 1), generator=g)
    rows = (start + torch.arange(9)) % 12          # each next token = previous + 1: learnable
    return DataLoader(list(rows), batch_size=16, shuffle=shuffle, collate_fn=collate, generator=g)


def accuracy(model, batch):
    out = model(**batch)
    return {"loss": out["loss"], "accuracy": (out["logits"].argmax(-1) == batch["labels"]).float().mean()}


def dict_lm():
    return autolr.Task(model=SelfLoss(), train_data=_loader(256, 0, True), val_data=_loader(64, 1, False),
                       training_step=lambda model, batch: model(**batch)["loss"], validation_step=accuracy)


def dict_lm_without_hooks():
    return autolr.Task(model=SelfLoss(), train_data=_loader(64, 0, True), val_data=_loader(32, 1, False),
                       loss_fn=nn.functional.cross_entropy)


def unreduced_loss():  # the batches are fine: the hook returns a loss per example
    return autolr.Task(model=SelfLoss(), train_data=_loader(64, 0, True), val_data=_loader(32, 1, False),
                       training_step=lambda model, batch: model(**batch)["loss"].repeat(4), validation_step=accuracy)


def validation_without_loss():
    return autolr.Task(model=SelfLoss(), train_data=_loader(64, 0, True), val_data=_loader(32, 1, False),
                       training_step=lambda model, batch: model(**batch)["loss"], validation_step=lambda model, batch: {"acc": 1.0})


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 2)

    def forward(self, x, mask):
        return self.lin(x * mask)


class WrongWidth(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 8), nn.Linear(5, 2)  # 5: the user meant 8

    def forward(self, x, mask):
        return self.b(self.a(x * mask))


def wrong_width():
    task = two_inputs()
    task.model = WrongWidth()
    return task


def two_inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g)
    mask = (torch.rand(200, 6, generator=g) > 0.2).float()
    y = (x[:, 0] > 0).long()
    data = TensorDataset(x, mask, y)
    return autolr.Task(model=TwoInputs(), train_data=data, val_data=data, loss_fn=nn.functional.cross_entropy)
'''

STUDY = """
name: {name}
task: "models:{task}"
train: {{epochs: 3, batch_size: 32{train}}}
objective: {{metric: {metric}, direction: {direction}}}
trials: {trials}
sampler: random
search:
  lr: {{low: 1.0e-3, high: 0.3}}
  optimizer: {{adam: {{}}}}
  schedule: {{cosine: {{}}}}
pruning: {{curve: none}}
"""


@pytest.fixture
def study(tmp_path):
    (tmp_path / "models.py").write_text(MODELS)

    def write(task: str, *, name: str = "own", metric: str = "val_loss", direction: str = "minimize", trials: int = 3, train: str = "") -> str:
        path = tmp_path / f"{name}.yaml"
        path.write_text(STUDY.format(name=name, task=task, metric=metric, direction=direction, trials=trials, train=train))
        return str(path)

    return write


def test_dict_batches_and_a_model_computing_its_own_loss_tune_end_to_end(study, stores, tmp_path) -> None:
    path = study("dict_lm", metric="accuracy", direction="maximize")
    result = autolr.tune(path, progress=False, **stores)
    complete = [t for t in result.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 3
    assert result.best.value > 0.5  # the next token is learnable: the winner learned it
    client = MlflowClient(stores["tracking_uri"])
    exp = client.get_experiment_by_name("own")
    run = next(r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("autolr.trial") == str(result.best.number))
    steps = 3 * math.ceil(256 / 16)
    for key in ("train_loss", "lr", "grad_norm"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == list(range(steps)), key
    for key in ("val_loss", "val_accuracy"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2, 3], key
    exported = tmp_path / "best.yaml"
    autolr.export_best(path, storage=stores["storage"], path=exported)
    best = autolr.load_best(exported)
    assert best.value == pytest.approx(result.best.value) and best.total_steps == steps
    optimizer = best.build_optimizer(nn.Linear(2, 2).parameters())
    assert optimizer.param_groups[0]["lr"] == pytest.approx(best.params["lr"])


def test_several_inputs_reach_the_model_with_the_default_step(study, stores) -> None:
    result = autolr.tune(study("two_inputs", trials=2), progress=False, **stores)
    assert [t.state.name for t in result.trials] == ["COMPLETE", "COMPLETE"]


def test_a_batch_the_steps_cannot_take_fails_before_any_trial_naming_the_hook(study, stores, tmp_path, capsys) -> None:
    path = study("dict_lm_without_hooks")
    with pytest.raises(
        StudyFileError,
        match=r"task\.batches: expected \(inputs\.\.\., target\) tuples.*training_step\(model, batch\).*got <a dict with keys \['input_ids', 'labels'\]",
    ):
        preflight(load_study(path))
    assert main(["tune", path, "--storage", stores["storage"], "--tracking-uri", stores["tracking_uri"]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "training_step(model, batch)" in err
    assert not (tmp_path / "optuna.db").exists()  # nothing written


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ("unreduced_loss", r"task\.training_step: expected a scalar loss, got <a tensor of shape \(4,\) \(reduce it, e\.g\. \.mean\(\)\)>$"),
        ("validation_without_loss", r"task\.validation_step: expected a dict with 'loss', got <keys \['acc'\]>$"),
    ],
)
def test_a_hook_that_returns_the_wrong_thing_is_named_not_the_batches(study, task, message) -> None:
    with pytest.raises(StudyFileError, match=message):
        preflight(load_study(study(task)))


def test_a_bug_in_the_users_model_is_named_with_its_line_not_blamed_on_the_batches(study, stores, capsys) -> None:
    path = study("wrong_width")
    with pytest.raises(
        StudyFileError, match=r"task: expected a model, loss and batches that train one step, got <RuntimeError: mat1 and mat2 .* at models.py:\d+ in forward>"
    ) as info:
        preflight(load_study(path))
    assert isinstance(info.value.__cause__, RuntimeError)  # the Python API keeps the model's traceback
    assert main(["tune", path, "--storage", stores["storage"], "--tracking-uri", stores["tracking_uri"]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "models.py:" in err  # the CLI: one line


def test_fp16_on_the_cpu_is_refused_before_any_trial(study) -> None:
    with pytest.raises(StudyFileError, match=r"train.precision: .*fp16 needs CUDA"):
        preflight(load_study(study("two_inputs", train=", precision: fp16")))


class _Stream(IterableDataset):
    """An endless stream of samples, as a reader of a large corpus would be."""

    def __iter__(self):
        g = torch.Generator().manual_seed(0)
        while True:
            x = torch.randn(4, generator=g)
            yield x, x.sum(0, keepdim=True)


def _linear_task(train_data, val_data=None) -> autolr.Task:
    torch.manual_seed(0)
    val = val_data or TensorDataset(torch.randn(32, 4), torch.randn(32, 1))
    return autolr.Task(model=nn.Linear(4, 1), train_data=train_data, val_data=val, loss_fn=nn.functional.mse_loss)


def _fit(task, **kwargs):
    trainer = Trainer(epochs=kwargs.pop("epochs", 2), batch_size=8, device=torch.device("cpu"), **kwargs)
    optimizer = torch.optim.SGD(task.model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return trainer, trainer.fit(task, optimizer, scheduler)


def test_an_iterable_dataset_trains_for_steps_per_epoch() -> None:
    trainer, result = _fit(_linear_task(_Stream()), steps_per_epoch=5)
    assert trainer.steps_per_epoch(_linear_task(_Stream())) == 5 and result.steps == 10 and len(result.history) == 2


def test_data_without_a_length_needs_steps_per_epoch() -> None:
    with pytest.raises(TypeError, match="has no length; pass steps_per_epoch"):
        _fit(_linear_task(_Stream()))


def test_a_study_over_data_without_a_length_names_the_key_to_set(write_study, stores) -> None:
    def stream(**_):
        return _linear_task(_Stream())

    path = write_study("name: unsized\ntrials: 1\nconfirm: false\nsearch: {lr: {low: 0.01, high: 0.1}}\n")
    expected = r"study.yaml: train.steps_per_epoch: expected batches per epoch, since task .*stream's train_data has no length, got <not set>$"
    with pytest.raises(autolr.StudyFileError, match=expected):
        autolr.tune(path, task=stream, progress=False, **stores)


def test_accumulation_and_a_step_budget_count_optimizer_steps() -> None:
    data = TensorDataset(torch.randn(64, 4), torch.randn(64, 1))  # 8 batches of 8 an epoch
    trainer, result = _fit(_linear_task(data), accumulate=4, epochs=3)
    assert trainer.steps_per_epoch(_linear_task(data)) == 2 and result.steps == 6
    trainer, result = _fit(_linear_task(data), max_steps=11, epochs=5)
    assert result.steps == 11 and len(result.history) == 2  # stopped inside epoch 2, which was still validated
    assert trainer.total_steps(_linear_task(data)) == 11


def test_bf16_trains_on_the_cpu() -> None:
    data = TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
    _, result = _fit(_linear_task(data), precision="bf16")
    assert math.isfinite(result.final["val_loss"])


def test_a_users_own_dataloader_is_used_as_it_is() -> None:
    seen = []

    def collate(rows):
        seen.append(len(rows))
        return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])

    rows = [(torch.randn(4), torch.randn(1)) for _ in range(30)]
    loader = DataLoader(rows, batch_size=10, collate_fn=collate)
    _, result = _fit(_linear_task(loader, DataLoader(rows, batch_size=15, collate_fn=collate)), epochs=1)
    assert result.steps == 3 and seen == [10, 10, 10, 15, 15]  # its own batch size and collate, train then validation


def test_validation_never_holds_all_outputs_and_weights_by_batch_size() -> None:
    """validation_step values are averaged over the set weighted by batch size."""
    rows = [(torch.full((4,), float(i)), torch.zeros(1)) for i in range(10)]
    loader = DataLoader(rows, batch_size=4)  # batches of 4, 4, 2
    task = autolr.Task(model=nn.Identity(), train_data=loader, val_data=loader,
                       training_step=lambda m, b: (m(b[0]) * 0).sum() + torch.zeros((), requires_grad=True),
                       validation_step=lambda m, b: {"loss": b[0][:, 0].mean()})  # fmt: skip
    metrics = autolr.trainer.evaluate(task, loader, torch.device("cpu"))
    assert metrics["val_loss"] == pytest.approx(sum(range(10)) / 10)


def test_model_modes_are_handled(study) -> None:
    modes = []

    class Watch(nn.Linear):
        def forward(self, x):
            modes.append(self.training)
            return super().forward(x)

    data = TensorDataset(torch.randn(16, 4), torch.randn(16, 1))
    task = autolr.Task(model=Watch(4, 1), train_data=data, val_data=data, loss_fn=nn.functional.mse_loss)
    _fit(task, epochs=1)
    assert modes == [True, True, False] and task.model.training  # train, train, eval; back in train mode


def test_loss_shape_mistakes_are_named() -> None:
    data = TensorDataset(torch.randn(16, 4), torch.randn(16, 1))
    task = autolr.Task(model=nn.Linear(4, 1), train_data=data, val_data=data, training_step=lambda m, b: m(b[0]) - b[1])
    with pytest.raises(autolr.trainer.BatchError, match=r"training_step: expected a scalar loss, got a tensor of shape \(8, 1\)"):
        _fit(task)


def test_a_task_needs_a_loss() -> None:
    data = TensorDataset(torch.randn(16, 4), torch.randn(16, 1))
    with pytest.raises(TypeError, match="expected loss_fn.* or training_step.*got neither"):
        autolr.Task(model=nn.Linear(4, 1), train_data=data, val_data=data)


def test_a_factory_defined_in_the_caller_is_passed_as_a_callable(write_study, stores) -> None:
    def make():
        return _linear_task(TensorDataset(torch.randn(64, 4), torch.randn(64, 1)))

    path = write_study(
        textwrap.dedent("""
        name: callable
        train: {epochs: 1, batch_size: 16}
        trials: 2
        search: {lr: {low: 1.0e-3, high: 0.1}}
    """)
    )  # no task: here, the callable stands in
    result = autolr.tune(path, task=make, progress=False, **stores)
    assert sum(t.state.name == "COMPLETE" for t in result.trials) == 2
    assert optuna.load_study(study_name="callable", storage=stores["storage"]).best_trial is not None
    with pytest.raises(autolr.InputError, match=r"jobs=2: the task .*make cannot cross to a worker process: .*jobs=1"):
        autolr.tune(path, task=make, jobs=2, progress=False, **stores)


def test_validation_data_without_a_length_is_one_pass(study) -> None:
    """An iterable validation set needs no length (it must end); training data without one takes steps_per_epoch."""

    class Finite(IterableDataset):
        def __iter__(self):
            g = torch.Generator().manual_seed(1)
            for _ in range(20):
                x = torch.randn(4, generator=g)
                yield x, x.sum(0, keepdim=True)

    _, result = _fit(_linear_task(_Stream(), Finite()), steps_per_epoch=3)
    assert result.steps == 6 and math.isfinite(result.final["val_loss"])


def test_lr_auto_and_find_lr_work_on_a_tasks_own_dataloader(study, stores) -> None:
    path = study("dict_lm")
    report = autolr.find_lr(path, storage=stores["storage"], tracking_uri=None)
    assert 0 < report.suggestion < report.max_stable_lr


def test_schedule_free_is_built_ready_to_train() -> None:
    pytest.importorskip("schedulefree")
    from autolr.optimizers import build_optimizer

    w = torch.nn.Parameter(torch.ones(2))
    opt = build_optimizer("schedulefree_adamw", [w], 0.1)
    (w**2).sum().backward()
    opt.step()  # schedule-free refuses to step in eval mode
    assert not torch.equal(w.detach(), torch.ones(2))


def test_a_script_without_a_main_guard_is_told_to_add_one_not_run_twice(tmp_path) -> None:
    """A script that calls ``tune(jobs=2)`` at import: the spawned worker imports it again (as
    ``__mp_main__``) and would run a whole second invocation, or die in multiprocessing's bootstrap.
    The worker stops at once with one line that says what to do; the study's own trials stand."""
    (tmp_path / "study.yaml").write_text("name: unguarded\ntask: least_squares\ntrain: {epochs: 1, batch_size: 64}\ntrials: 4\nconfirm: false\n"
                                         "search: {lr: {low: 1.0e-3, high: 0.1}}\n")  # fmt: skip
    script = tmp_path / "unguarded.py"
    script.write_text("import autolr\nautolr.tune('study.yaml', jobs=2, tracking_uri=None, progress=False)\nprint('TUNED')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(autolr.__file__).parents[1]), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    said = [line for line in done.stderr.splitlines() if "__main__" in line]
    assert len(said) == 1 and said[0].startswith(f"autolr: error: {script} calls autolr.tune at import"), done.stderr[-3000:]
    assert 'put the call under `if __name__ == "__main__":`' in said[0]
    assert done.stdout.count("TUNED") <= 1  # never a second invocation in the worker
    assert "worker 1: exit code 1" in done.stderr.splitlines()[-1]  # the script's own call ends saying which worker stopped
