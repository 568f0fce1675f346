"""The conditional search space, the samplers and the export's flat params."""

from __future__ import annotations

import math

import optuna
import pytest

from autolr.config import parse_study
from autolr.hparams import RunConfig
from autolr.sampler import CeilingSampler, make_sampler
from autolr.space import grid_search_space, lr_decades, suggest_run
from autolr.study import open_study
from autolr.sweep import SweepSampler

SPACE = {
    "task": "digits_mlp",
    "search": {
        "lr": {"low": 1e-4, "high": 1.0},
        "optimizer": {"sgd": {"momentum": {"low": 0.5, "high": 0.99}}, "adam": {}},
        "schedule": {"constant": {}, "step": {"gamma": 0.5}, "cosine_restarts": {}},
        "warmup": {"low": 0.0, "high": 0.2},
    },
}


def test_parameters_are_suggested_only_for_the_chosen_schedule_and_optimizer() -> None:
    config = parse_study(SPACE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        run = suggest_run(trial, config.search, {"sgd": (1e-4, 1.0), "adam": (1e-4, 1.0)})
        names = set(trial.params)
        assert names >= {"optimizer", "lr", "schedule", "warmup"}
        assert ("sgd.momentum" in names) == (run.optimizer == "sgd")
        assert ("step.step_frac" in names) == (run.schedule == "step")
        assert "step.gamma" not in names  # fixed in the file: not a search dimension
        assert ("cosine_restarts.cycles" in names) == (run.schedule == "cosine_restarts")
        assert not any(n.startswith("adam.") for n in names)  # adam: {} keeps its defaults
        flat = run.flat()
        assert RunConfig.from_flat(flat) == RunConfig(run.optimizer, run.lr, run.schedule, run.warmup,
                                                      {k: flat[k] for k in run.optimizer_params}, {k: flat[k] for k in run.schedule_params})  # fmt: skip
        if run.schedule == "step":
            assert flat["gamma"] == 0.5
        seen.add((run.optimizer, run.schedule))
        study.tell(trial, 1.0)
    assert len(seen) == 6


def test_lr_decades_are_the_naive_grid() -> None:
    assert lr_decades(1e-5, 1.0) == pytest.approx([1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    assert lr_decades(2e-3, 5e-2) == pytest.approx([1e-2])
    assert lr_decades(2e-3, 5e-3) == [2e-3, 5e-3]


def test_grid_sampler_crosses_decades_schedules_and_optimizers() -> None:
    config = parse_study(SPACE)
    grid = grid_search_space(config.search, {"sgd": (1e-4, 1.0), "adam": (1e-4, 1.0)})
    assert grid == {"lr": pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0]), "optimizer": ["sgd", "adam"],
                    "schedule": ["constant", "step", "cosine_restarts"]}  # fmt: skip
    study = optuna.create_study(sampler=make_sampler("grid", seed=0, grid_space=grid))
    seen = set()

    def objective(trial):
        run = suggest_run(trial, config.search, {"sgd": (1e-4, 1.0), "adam": (1e-4, 1.0)}, grid=True)
        assert set(trial.params) == {"optimizer", "lr", "schedule"}  # the rest sits at representative values
        assert run.warmup == 0.0 and run.schedule_params.get("gamma", 0.5) == 0.5
        seen.add((run.optimizer, round(run.lr, 8), run.schedule))
        return 1.0

    study.optimize(objective, n_trials=50)  # the grid stops the study once exhausted
    assert len(study.trials) == 30 and len(seen) == 30


@pytest.mark.parametrize("name", ["tpe", "gp", "cmaes"])
def test_model_based_samplers_keep_proposals_off_rates_that_diverged(name: str) -> None:
    sampler = make_sampler(name, seed=0)
    assert isinstance(sampler, CeilingSampler)
    config = parse_study({"task": "digits_mlp", "search": {"lr": {"low": 1e-4, "high": 10.0}, "optimizer": ["sgd"]}})
    study = optuna.create_study(sampler=sampler)
    late = []
    for i in range(24):
        trial = study.ask()
        run = suggest_run(trial, config.search, {"sgd": (1e-4, 10.0)})
        if i >= 12:
            late.append(run.lr)
        if run.lr > 0.1:  # everything above 0.1 "diverges"
            trial.set_user_attr("autolr.diverged", True)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, abs(math.log10(run.lr) + 1.5))  # best near 0.03
    ceiling = min(t.params["lr"] for t in study.trials if t.user_attrs.get("autolr.diverged"))
    assert all(lr < ceiling for lr in late)  # learned: nothing proposed at or above the lowest divergence


@pytest.mark.parametrize("joint", [True, False])
def test_gp_models_the_rate_with_the_optimizer_when_their_ranges_differ(monkeypatch, joint: bool) -> None:
    """``lr: auto`` gives each optimizer its own range: after GP's start-up every rate is proposed with
    its optimizer, inside its optimizer's range (left out of GP's space, each was drawn at random)."""
    bounds = {"sgd": (1e-2, 1.0), "adam": (1e-4, 1e-2)}
    config = parse_study({"task": "digits_mlp", "search": {"lr": "auto", "optimizer": ["sgd", "adam"], "schedule": ["constant"]}})
    alone = []
    independent = optuna.samplers.GPSampler.sample_independent

    def spy(self, study, trial, name, dist):
        if name == "lr" and len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) >= 8:
            alone.append(trial.number)
        return independent(self, study, trial, name, dist)

    monkeypatch.setattr(optuna.samplers.GPSampler, "sample_independent", spy)
    study = optuna.create_study(sampler=make_sampler("gp", seed=0, lr_bounds=bounds if joint else None))
    late = []
    for _ in range(20):
        trial = study.ask()
        run = suggest_run(trial, config.search, bounds)
        low, high = bounds[run.optimizer]
        assert low <= run.lr <= high
        best = 0.1 if run.optimizer == "sgd" else 1e-3
        study.tell(trial, abs(math.log10(run.lr / best)) + (0.5 if run.optimizer == "sgd" else 0.0))
        late += [(trial.number, run.optimizer, run.lr)] if trial.number >= 8 else []
    modelled = [n for n, _, _ in late if n not in alone]
    assert bool(modelled) == joint, alone  # without the joint range every rate after the start-up is drawn at random
    assert len({(o, lr) for _, o, lr in late}) == len(late)  # never the same trial again (a clip to the range's edge repeated it)


def test_the_ceiling_reads_the_trials_the_sampler_read() -> None:
    """Keeping a proposal below the ceiling costs no read of the storage beyond the base sampler's own."""
    config = parse_study({"task": "digits_mlp", "search": {"lr": {"low": 1e-4, "high": 10.0}, "optimizer": ["sgd", "adam"]}})

    def reads_with(ceiling: bool) -> int:
        reads = []

        class Counting(optuna.storages.InMemoryStorage):
            def get_all_trials(self, study_id, deepcopy=True, states=None):
                reads.append(states)
                return super().get_all_trials(study_id, deepcopy=deepcopy, states=states)

        study = optuna.create_study(storage=Counting(), sampler=make_sampler("tpe", seed=0, ceiling=ceiling))
        for _ in range(12):
            trial = study.ask()
            run = suggest_run(trial, config.search, {"sgd": (1e-4, 10.0), "adam": (1e-4, 10.0)})
            study.tell(trial, abs(math.log10(run.lr) + 1.5))
        return len(reads)

    assert reads_with(ceiling=True) == reads_with(ceiling=False)


def test_random_and_grid_stay_plain() -> None:
    assert isinstance(make_sampler("random", seed=0), optuna.samplers.RandomSampler)
    with pytest.raises(ValueError, match="unknown sampler 'bayes'"):
        make_sampler("bayes", seed=0)


@pytest.mark.parametrize("sampler, wrapped", [("tpe", True), ({"name": "tpe", "ceiling": False}, False), ({"name": "gp", "ceiling": False}, False)])
def test_the_study_files_ceiling_switch_reaches_the_studys_sampler(tmp_path, sampler, wrapped: bool) -> None:
    config = parse_study({**SPACE, "name": "switch", "sampler": sampler})
    study = open_study(config, f"sqlite:///{tmp_path / 'switch.db'}")
    sampler = study.sampler.base if isinstance(study.sampler, SweepSampler) else study.sampler  # the schedule sweep wraps them all
    assert isinstance(sampler, CeilingSampler) is wrapped
    base = sampler.base if wrapped else sampler
    assert isinstance(base, optuna.samplers.TPESampler if config.sampler == "tpe" else optuna.samplers.GPSampler)
