"""Your own training loop (``loop:``): the loop's value is the trial's, divergence is PRUNED within a
few steps, tracking and export are those of built-in trials; from the CLI and with a callable."""

from __future__ import annotations

import textwrap

import numpy as np
import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient

import autolr
from autolr.cli import main

LOOP = """
import torch
from torch import nn

CALLS = []


def train(trial):
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = x @ torch.randn(8, 1)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    optimizer = trial.build_optimizer(model)
    epochs, batch = 4, 32
    scheduler = trial.build_scheduler(optimizer, total_steps=epochs * (256 // batch))
    for epoch in range(epochs):
        for i in range(0, 256, batch):
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(x[i:i + batch]), y[i:i + batch])
            loss.backward()
            trial.step(loss)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 100.0)   # the user's own clipping
            optimizer.step()
            scheduler.step()
        with torch.no_grad():
            val = nn.functional.mse_loss(model(x), y).item()
        trial.epoch({"val_loss": val})
    CALLS.append(trial.params["lr"])
    return val
"""

STUDY = """
name: {name}
loop: "myloop:train"
trials: {trials}
sampler: random
search:
  lr: {{low: {low}, high: {high}}}
  optimizer: {{sgd: {{momentum: 0.9}}}}
  schedule: {{constant: {{}}, cosine: {{}}}}
pruning: {{curve: none}}
"""


@pytest.fixture
def loop_study(tmp_path):
    (tmp_path / "myloop.py").write_text(LOOP)

    def write(name: str, *, low: float = 1e-3, high: float = 0.05, trials: int = 3) -> str:
        path = tmp_path / f"{name}.yaml"
        path.write_text(STUDY.format(name=name, low=low, high=high, trials=trials))
        return str(path)

    return write


def _trial_runs(tracking_uri: str, experiment: str) -> dict[int, object]:
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    return {int(r.data.tags["autolr.trial"]): r for r in client.search_runs([exp.experiment_id]) if "autolr.trial" in r.data.tags}


def test_a_loop_named_in_the_study_file_tunes_from_the_cli(loop_study, stores, tmp_path) -> None:
    path = loop_study("cli-loop")
    assert main(["tune", path, "--storage", stores["storage"], "--tracking-uri", stores["tracking_uri"]]) == 0
    study = optuna.load_study(study_name="cli-loop", storage=stores["storage"])
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    best = study.best_trial
    runs = _trial_runs(stores["tracking_uri"], "cli-loop")
    client = MlflowClient(stores["tracking_uri"])
    history = client.get_metric_history(runs[best.number].info.run_id, "val_loss")
    assert best.value == pytest.approx(history[-1].value)  # the loop's return value is the trial's
    for key in ("train_loss", "lr", "grad_norm"):
        assert [m.step for m in client.get_metric_history(runs[best.number].info.run_id, key)] == list(range(32)), key
    assert any(k.startswith("weight_grad_norm.") for k in runs[best.number].data.metrics)  # per-layer statistics
    assert runs[best.number].data.tags["autolr.state"] == "COMPLETE" and best.user_attrs["autolr.steps"] == 32
    assert main(["export", path, "--storage", stores["storage"], "-o", str(tmp_path / "best.yaml")]) == 0
    exported = autolr.load_best(tmp_path / "best.yaml")
    assert exported.params["lr"] == best.user_attrs["autolr.params"]["lr"] and exported.loop == "myloop:train" and exported.epochs is None
    (parent,) = [r for r in client.search_runs([client.get_experiment_by_name("cli-loop").experiment_id]) if r.data.tags.get("autolr.role") == "study"]
    assert parent.data.params["loop"] == "myloop:train"  # no "task", and not the trainer's budget the loop never used
    assert not {"task", "epochs", "batch_size"} & set(parent.data.params)
    assert parent.data.params["sampler_ceiling"] == "False"  # sampler: random never uses the ceiling: the param says what was in effect


def test_divergent_loop_trials_are_pruned_within_a_few_steps_with_their_reason(loop_study, stores) -> None:
    path = loop_study("diverging", low=50.0, high=500.0, trials=2)
    result = autolr.tune(path, progress=False, **stores)
    for trial in result.trials:
        assert trial.state.name == "PRUNED"
        assert trial.user_attrs["autolr.prune_reason"].startswith("diverged: ")
        assert trial.user_attrs["autolr.divergence_step"] < 8  # checked every 4 steps: stopped within a window or two
    runs = _trial_runs(stores["tracking_uri"], "diverging")
    assert all(r.data.tags["autolr.state"] == "PRUNED" and r.data.tags["autolr.prune_reason"].startswith("diverged") for r in runs.values())


def test_a_loop_passed_as_a_callable(write_study, stores) -> None:
    seen, seeds = [], []

    def train(trial: autolr.Trial) -> dict:
        seen.append(trial.number)
        seeds.append((trial.seed, torch.initial_seed()))  # what the loop is told is what torch was seeded with
        w = torch.nn.Parameter(torch.tensor([3.0]))
        optimizer = trial.build_optimizer([w])
        for _ in range(5):
            optimizer.zero_grad()
            loss = (w**2).sum()
            loss.backward()
            trial.step(loss)
            optimizer.step()
        trial.epoch({"val_loss": float(w.item() ** 2)})
        return {"val_loss": float(w.item() ** 2)}  # a dict holding the objective's metric

    path = write_study(
        textwrap.dedent("""
        name: callable-loop
        trials: 3
        search: {lr: {low: 1.0e-3, high: 0.5}, optimizer: {sgd: {momentum: 0.0}}}
    """)
    )
    result = autolr.tune(path, loop=train, progress=False, **stores)
    assert seen == [0, 1, 2, 0, 1] and all(t.state.name == "COMPLETE" for t in result.trials)  # then the winner and its step back on a fresh seed
    study_seed = seeds[0][0]
    assert seeds == [(study_seed, study_seed)] * 3 + [(study_seed + 1000, study_seed + 1000)] * 2
    for t in result.trials:  # plain gradient descent on w**2 from 3: the value follows from the rate
        lr = t.user_attrs["autolr.params"]["lr"]
        assert t.value == pytest.approx(9 * (1 - 2 * lr) ** 10, rel=1e-4)


def test_a_loop_that_returns_nothing_is_valued_by_its_last_epoch(write_study, stores) -> None:
    def train(trial: autolr.Trial) -> None:
        w = torch.nn.Parameter(torch.tensor([1.0]))
        trial.build_optimizer([w])
        trial.epoch({"loss": 0.5})  # "loss" stands for the objective val_loss

    path = write_study("name: quiet-loop\ntrials: 1\nsearch: {lr: {low: 0.01, high: 0.1}}\n")
    result = autolr.tune(path, loop=train, progress=False, **stores)
    assert result.best.value == 0.5


def test_curve_pruning_reaches_a_loop_through_trial_epoch(write_study, stores) -> None:
    def train(trial: autolr.Trial) -> float:
        w = torch.nn.Parameter(torch.tensor([1.0]))
        trial.build_optimizer([w])
        bad = trial.number >= 3  # later trials are far worse at every epoch
        for epoch in range(5):
            trial.epoch({"val_loss": 10.0 + epoch if bad else 1.0 / (epoch + 1)})
        return 1.0

    path = write_study("name: pruned-loop\ntrials: 5\nsearch: {lr: {low: 0.01, high: 0.1}}\npruning: {curve: median, startup_trials: 3, warmup_epochs: 1}\n")
    result = autolr.tune(path, loop=train, progress=False, **stores)
    states = [t.state.name for t in result.trials]
    assert states[:3] == ["COMPLETE"] * 3 and states[3:] == ["PRUNED", "PRUNED"]
    assert result.trials[3].user_attrs["autolr.prune_reason"].startswith("curve: val_loss")


def test_a_loop_that_raises_is_fail_with_its_error(write_study, stores) -> None:
    def train(trial: autolr.Trial) -> float:
        raise ValueError("my data is missing")

    path = write_study("name: broken-loop\ntrials: 2\nsearch: {lr: {low: 0.01, high: 0.1}}\n")
    with pytest.raises(RuntimeError, match="3 trials in a row failed; last: ValueError: my data is missing"):
        autolr.tune(path, loop=train, progress=False, **stores)


@pytest.mark.parametrize(
    ("returned", "expected"),
    [
        (
            None,
            r"loop: expected a loop returning the objective's value, or reporting 'val_loss' through trial.epoch\(...\), got <None, and no trial.epoch\(...\)>",
        ),
        ({"accuracy": 0.5}, r"loop: expected a loop returning a number or a dict holding 'val_loss', got <a dict of \['accuracy'\]>"),
        ({"val_loss": None}, r"loop: expected a loop returning a number or a dict holding 'val_loss', got <a dict with 'val_loss': None>"),
        ("0.5", r"loop: expected a loop returning a number \(the objective's 'val_loss'\), got <str '0.5'>"),
        (True, r"loop: expected a loop returning a number \(the objective's 'val_loss'\), got <bool True>$"),  # `return ok`: every trial 1.0
        ({"val_loss": torch.tensor(False)}, r"got <Tensor tensor\(False\)>$"),
        (np.float64(0.3) < np.float64(0.5), r"got <bool_? (np\.)?True_?>$"),  # `return loss < best` with NumPy numbers
        (torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU()), r"got <Sequential Sequential\( \(0\): Linear\(in_features=2, [^\n]*>$"),  # one line
    ],
)
def test_a_loop_that_breaks_its_return_contract_stops_the_study_in_one_line(write_study, stores, returned, expected) -> None:
    """Every trial would break it the same way: the first one fails (its error recorded) and the
    study stops with the study file's one-line error, not after three failed trials and tracebacks."""
    calls = []

    def train(trial: autolr.Trial):
        calls.append(trial.params["lr"])
        return returned

    path = write_study("name: bad-return\ntrials: 4\nsearch: {lr: {low: 0.01, high: 0.1}}\n")
    with pytest.raises(autolr.StudyFileError, match=expected):
        autolr.tune(path, loop=train, progress=False, storage=stores["storage"], tracking_uri=None)  # no MLflow: what is checked is in Optuna
    [trial] = optuna.load_study(study_name="bad-return", storage=stores["storage"]).trials
    assert len(calls) == 1 and trial.state.name == "FAIL" and trial.user_attrs["autolr.error"].startswith("LoopContractError:")


@pytest.mark.parametrize(
    ("reported", "returned", "reason"),
    [
        (0.25, float("nan"), "diverged: val_loss nan returned by the loop (its last trial.epoch reported 0.25)"),
        (None, float("inf"), "diverged: val_loss inf returned by the loop"),
        (float("nan"), None, "diverged: val_loss nan after the last epoch"),  # the guard off: the epoch reported it
    ],
)
def test_a_non_finite_value_is_a_divergence_that_says_where_it_came_from(write_study, stores, reported, returned, reason) -> None:
    def train(trial: autolr.Trial):
        if reported is not None:
            trial.epoch({"val_loss": reported})
        return returned

    path = write_study("name: nan-return\ntrials: 2\nconfirm: false\npruning: {divergence: false}\nsearch: {lr: {low: 0.01, high: 0.1}}\n")
    result = autolr.tune(path, loop=train, progress=False, storage=stores["storage"], tracking_uri=None)
    assert {t.user_attrs["autolr.prune_reason"] for t in result.trials} == {reason}
    assert all("autolr.divergence_step" not in t.user_attrs for t in result.trials)  # no step ran: none named


def test_after_a_trial_completed_a_bad_return_is_that_trials_fail(write_study, stores) -> None:
    """A loop that returns a value on other paths (here its third call returns None): the study goes
    on, the trial is FAIL with its error, in one warning line."""
    calls = []

    def train(trial: autolr.Trial):
        calls.append(trial.params["lr"])
        return None if len(calls) == 3 else trial.params["lr"]

    path = write_study("name: sometimes-none\ntrials: 4\nsampler: random\nconfirm: false\nsearch: {lr: {low: 0.01, high: 0.1}}\n")
    result = autolr.tune(path, loop=train, progress=False, **stores)
    states = [t.state.name for t in result.trials]
    assert states == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE", "COMPLETE"] and len(calls) == 5
    assert result.trials[2].user_attrs["autolr.error"].startswith("LoopContractError: ")


def test_a_loop_returning_a_bad_value_is_exit_2_from_the_cli(tmp_path, stores, capsys) -> None:
    (tmp_path / "noreturn.py").write_text("def train(trial):\n    pass\n")
    path = tmp_path / "s.yaml"
    path.write_text('name: noreturn\nloop: "noreturn:train"\ntrials: 2\nsearch: {lr: {low: 0.01, high: 0.1}}\n')
    assert main(["tune", str(path), "--storage", stores["storage"], "--no-tracking"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "failed" not in err  # the progress bar's lines, then the error's one
    assert err.strip().splitlines()[-1] == (f"autolr: error: {path}: loop: expected a loop returning the objective's value, or reporting 'val_loss' "
                                            "through trial.epoch(...), got <None, and no trial.epoch(...)>")  # fmt: skip


def test_param_groups_given_as_generators_train(write_study, stores) -> None:
    """Naming the layers must not use up a param group's generator (the optimizer got none before)."""
    moved = []

    def train(trial: autolr.Trial) -> float:
        model = torch.nn.Linear(3, 1)
        before = model.weight.detach().clone()
        optimizer = trial.build_optimizer([{"params": model.parameters()}])
        for _ in range(4):
            optimizer.zero_grad()
            loss = model(torch.ones(2, 3)).pow(2).mean()
            loss.backward()
            trial.step(loss)
            optimizer.step()
        moved.append(not torch.equal(before, model.weight))
        return float(loss)

    path = write_study("name: groups\ntrials: 1\nconfirm: false\nsearch: {lr: {low: 0.01, high: 0.1}}\n")
    autolr.tune(path, loop=train, progress=False, **stores)
    assert moved == [True]


def test_a_loops_own_optuna_prune_is_pruned_in_both_stores(write_study, stores) -> None:
    def train(trial: autolr.Trial) -> float:
        raise optuna.TrialPruned("my own reason")

    path = write_study("name: own-prune\ntrials: 1\nconfirm: false\nsearch: {lr: {low: 0.01, high: 0.1}}\n")
    result = autolr.tune(path, loop=train, progress=False, **stores)
    (trial,) = result.trials
    assert trial.state.name == "PRUNED" and trial.user_attrs["autolr.prune_reason"] == "pruned: my own reason"
    (run,) = _trial_runs(stores["tracking_uri"], "own-prune").values()
    assert run.info.status == "FINISHED" and run.data.tags["autolr.state"] == "PRUNED"


def test_a_study_tuned_with_a_callable_loop_exports_as_a_loop(write_study, stores, tmp_path) -> None:
    def train(trial: autolr.Trial) -> float:
        trial.build_optimizer([torch.nn.Parameter(torch.zeros(1))])
        return trial.params["lr"]

    path = write_study("name: callable-export\ntrials: 2\nconfirm: false\nsearch: {lr: {low: 0.01, high: 0.1}}\n")
    autolr.tune(path, loop=train, progress=False, **stores)
    assert main(["export", str(path), "--storage", stores["storage"], "-o", str(tmp_path / "best.yaml")]) == 0  # no code needed to read
    best = autolr.load_best(tmp_path / "best.yaml")
    assert best.loop.endswith("train") and best.task is None and best.epochs is None and best.batch_size is None


@pytest.mark.parametrize("reports", ["never", "before", "after", "never, validating twice", "before, validating twice", "never, checkpointed"])
def test_a_plateau_schedule_in_a_loop_gets_each_epochs_metric_once(write_study, stores, reports) -> None:
    """A loop that never calls ``scheduler.report`` still trains a plateau schedule on its metric (as
    autolr's trainer and the exported winner rebuilt with ``report`` do); one that reports, before or
    after ``trial.epoch``, is not counted twice, nor is a metric reported by two ``trial.epoch`` calls
    in one epoch, and a scheduler restored from its state_dict goes on as it was."""
    rates = []

    def train(trial: autolr.Trial) -> float:
        w = torch.nn.Parameter(torch.tensor([1.0]))
        optimizer = trial.build_optimizer([w])
        scheduler = trial.build_scheduler(optimizer, total_steps=12)
        for epoch in range(4):
            for _ in range(3):
                optimizer.zero_grad()
                loss = (w**2).sum()
                loss.backward()
                trial.step(loss)
                rates.append(optimizer.param_groups[0]["lr"])
                optimizer.step()
                scheduler.step()
            value = 1.0 + epoch  # worse every epoch: a reduction after each epoch from the second on
            if reports.startswith("before"):
                scheduler.report(value)
            trial.epoch({"val_loss": value})
            if reports.endswith("twice"):
                trial.epoch({"val_loss": value})
            if reports == "after":
                scheduler.report(value)
            if reports.endswith("checkpointed"):
                scheduler.load_state_dict(scheduler.state_dict())
        return value

    path = write_study(f"""
        name: plateau-loop-{reports.replace(", ", "-").replace(" ", "-")}
        trials: 1
        search: {{lr: {{low: 0.01, high: 0.1}}, optimizer: {{sgd: {{momentum: 0.0}}}}, schedule: {{plateau: {{factor: 0.5, patience: 0}}}}}}
        pruning: {{curve: none}}
        confirm: false
    """)
    result = autolr.tune(path, loop=train, progress=False, **stores)
    peak = result.trials[0].user_attrs["autolr.params"]["lr"]
    assert rates == pytest.approx([peak] * 6 + [peak / 2] * 3 + [peak / 4] * 3)


@pytest.mark.parametrize(
    ("built", "said"),
    [
        (10, "the loop ran 30 steps: its rate held the schedule's last value for the last 20"),
        (60, "the loop ran 30 steps (50%): its rate never reached the schedule's end"),
        (30, None),
    ],
)
def test_a_schedule_built_for_other_steps_than_the_loop_runs_is_reported_once_and_exported_as_built(
    write_study, stores, caplog, tmp_path, built: int, said: str | None
) -> None:
    """A loop that builds its schedule for 10 steps and runs 30: the rate sat at the schedule's last
    value for 20 steps; built for 60, its cosine never got past half its decay. autolr knows both
    numbers and says so, once for the study; the export holds the span the schedule was built over,
    so ``load_best(...).build_scheduler(optimizer, total_steps=best.total_steps)`` rebuilds the curve
    that was tuned."""
    rates = []

    def train(trial: autolr.Trial) -> float:
        model = torch.nn.Linear(3, 1)
        optimizer = trial.build_optimizer(model)
        scheduler = trial.build_scheduler(optimizer, total_steps=built)
        for _ in range(30):
            optimizer.zero_grad()
            loss = model(torch.ones(4, 3)).pow(2).mean()
            loss.backward()
            trial.step(loss)
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return float(loss.detach())

    path = write_study(f"name: schedule-{built}\ntrials: 3\nconfirm: false\nsearch: {{lr: {{low: 0.001, high: 0.01}}, schedule: {{cosine: {{}}}}}}\n")
    with caplog.at_level("WARNING", logger="autolr.objective"):
        result = autolr.tune(path, loop=train, progress=False, **stores)
    warned = [r.getMessage() for r in caplog.records if "total_steps=" in r.getMessage()]
    if said is None:
        assert warned == []
    else:
        assert len(warned) == 1 and f"the schedule was built for total_steps={built} and {said}" in warned[0], warned
    autolr.export_best(path, storage=stores["storage"], path=tmp_path / "best.yaml")
    best = autolr.load_best(tmp_path / "best.yaml")
    assert best.total_steps == built
    rebuilt_optimizer = best.build_optimizer(torch.nn.Linear(3, 1).parameters())
    rebuilt = best.build_scheduler(rebuilt_optimizer)
    tuned = rates[30 * result.best.number : 30 * result.best.number + 30]
    for want in tuned:
        assert rebuilt_optimizer.param_groups[0]["lr"] == pytest.approx(want)
        rebuilt_optimizer.step()
        rebuilt.step()


def test_a_loop_that_never_calls_trial_step_is_told_what_it_goes_without(write_study, stores, caplog) -> None:
    """``trial.step`` is what gives a loop the divergence guard and the per-step curves; a loop that
    never calls it still tunes (its value is what it returns), with one warning for the study."""

    def train(trial: autolr.Trial) -> float:
        model = torch.nn.Linear(3, 1)
        optimizer = trial.build_optimizer(model)
        for _ in range(5):
            optimizer.zero_grad()
            model(torch.ones(4, 3)).pow(2).mean().backward()
            optimizer.step()
        return model(torch.ones(4, 3)).pow(2).mean().item()

    path = write_study("name: no-trial-step\ntrials: 3\nconfirm: false\nsearch: {lr: {low: 0.001, high: 0.01}}\n")
    with caplog.at_level("WARNING", logger="autolr.objective"):
        result = autolr.tune(path, loop=train, progress=False, **stores)
    warned = [r.getMessage() for r in caplog.records if "trial.step" in r.getMessage()]
    assert len(warned) == 1 and "the loop never called trial.step(loss): a diverging trial runs to its end" in warned[0]
    assert sum(t.state.name == "COMPLETE" for t in result.trials) == 3


@pytest.mark.parametrize(
    ("mistake", "said"),
    [
        ("no backward", "no gradient reached the parameters given to trial.build_optimizer in 30 trial.step calls"),
        ("another model's optimizer", "no gradient reached the parameters given to trial.build_optimizer in 30 trial.step calls"),
        ("no optimizer.step", "the optimizer trial.build_optimizer built never stepped in 30 trial.step calls"),
        ("its own optimizer", "the optimizer trial.build_optimizer built never stepped in 30 trial.step calls"),
        ("none", None),
    ],
)
def test_a_loop_that_trains_nothing_is_reported_once(write_study, stores, caplog, capsys, mistake: str, said: str | None) -> None:
    """A loop that forgets ``loss.backward()`` or ``optimizer.step()``, or steps an optimizer other
    than the trial's, trains nothing: every trial ends where it started and reads the same, so the
    study's winner is chance. autolr sees both (the gradient norms of ``trial.step``, the optimizer's
    step hook) and says which, once for the study; a loop that trains says nothing."""
    values = []

    def train(trial: autolr.Trial) -> float:
        torch.manual_seed(0)
        model, other = torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
        optimizer = trial.build_optimizer(other if mistake == "another model's optimizer" else model)
        stepped = torch.optim.SGD(model.parameters(), lr=trial.params["lr"]) if mistake == "its own optimizer" else optimizer
        for _ in range(30):
            stepped.zero_grad()
            loss = (model(torch.ones(4, 3)) - 1.0).pow(2).mean()
            if mistake != "no backward":
                loss.backward()
            trial.step(loss)
            if mistake not in ("no optimizer.step", "another model's optimizer"):
                stepped.step()
        values.append(float(loss.detach()))
        return values[-1]

    name = "".join(c if c.isalnum() else "-" for c in mistake)
    path = write_study(f"name: trains-nothing-{name}\ntrials: 3\nconfirm: false\nsearch: {{lr: {{low: 0.001, high: 0.01}}}}\n")
    with caplog.at_level("WARNING", logger="autolr.objective"):
        autolr.tune(path, loop=train, progress=False, **stores)
    warned = [r.getMessage() for r in caplog.records if "trial.build_optimizer" in r.getMessage()]
    capsys.readouterr()
    assert main(["show", str(path), "--storage", stores["storage"]]) == 0  # the summary says it again, where a log line is easy to miss
    shown = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    if said is None:
        assert warned == [] and shown == [] and len(set(values)) == 3  # each rate trained the model somewhere else
    else:
        assert len(warned) == 1 and said in warned[0], warned
        assert len(shown) == 1 and shown[0].startswith("warning: 3 of 3 complete trials: ") and said in shown[0], shown
        assert len(set(values)) == 1 or mistake == "its own optimizer"  # every trial read the same: nothing was trained


def test_a_rate_that_learnt_then_lost_it_all_is_not_stable(write_study, stores) -> None:
    """A run that learnt, spiked and then sat near its starting loss (a classifier at chance) trips no
    divergence rule and ends a little below its start; it was still not trained by its rate, so the
    study's stability limit (the sampler's, the report's) is the rate below it."""
    from autolr.sampler import lr_ceiling
    from autolr.stability import study_limits
    from autolr.store import trial_row

    def train(trial: autolr.Trial) -> float:
        w = torch.nn.Parameter(torch.tensor([1.0]))
        trial.build_optimizer([w])
        lost = trial.params["lr"] >= 0.1
        for epoch in range(8):
            for step in range(epoch * 10, epoch * 10 + 10):
                learnt = 0.3 + 2.0 * 0.9**step
                trial.step(torch.tensor(learnt if step < 40 or not lost else (4.0 if step < 42 else 1.8)))
            trial.epoch({"val_loss": 1.8 if lost and epoch >= 4 else 0.3})
        return 1.8 if lost else 0.3

    path = write_study("name: lost-it\ntrials: 4\nsampler: grid\nconfirm: false\nsearch: {lr: {low: 1.0e-3, high: 1.0}, optimizer: {sgd: {momentum: 0.0}}}\n")
    result = autolr.tune(path, loop=train, progress=False, **stores)
    assert sorted(t.params["lr"] for t in result.trials if t.state.name == "COMPLETE") == pytest.approx([1e-3, 1e-2, 0.1, 1.0])
    lost = [t for t in result.trials if t.params["lr"] >= 0.1]
    assert all(
        t.user_attrs["autolr.loss_ratio"] < 1.0 and t.user_attrs["autolr.low_loss_ratio"] < 0.3 < 0.8 < t.user_attrs["autolr.last_loss_ratio"] for t in lost
    )  # ended below its start
    assert lr_ceiling(result.trials, "sgd")[0] == pytest.approx(0.01)
    assert study_limits([trial_row(t) for t in result.trials])["sgd"].lr == pytest.approx(0.01)
