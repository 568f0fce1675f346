"""The schedule sweep: a study's last trials are the incumbent's rate with each other schedule."""

from __future__ import annotations

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

import autolr
from autolr import keys
from autolr.cli import main
from autolr.sweep import sweep_at, sweep_params

SCHEDULES = CategoricalDistribution(["constant", "cosine", "step", "exponential"])
LR = FloatDistribution(1e-5, 1.0, log=True)


def test_the_sweep_takes_the_last_trials_of_studies_large_enough() -> None:
    assert sweep_at(30, 4) == 26  # enqueued as trial 26 starts: 27, 28, 29 are the sweep
    assert sweep_at(20, 4) == 16 and sweep_at(19, 4) is None  # under 20 trials: none to spare
    assert sweep_at(30, 1) is None  # one schedule: nothing to sweep
    assert sweep_at(30, 6) == 24 and sweep_at(30, 7) is None  # at most a sixth of the study


def _trial(value, optimizer, lr, schedule, state=TrialState.COMPLETE, **more):
    params = {"optimizer": optimizer, "lr": lr, "schedule": schedule, **more}
    dists = {"optimizer": CategoricalDistribution(["adam", "sgd"]), "lr": LR, "schedule": SCHEDULES}
    dists |= {k: FloatDistribution(0.0, 1.0) for k in more}
    return optuna.trial.create_trial(state=state, value=value if state == TrialState.COMPLETE else None, params=params, distributions=dists)


def test_the_incumbents_rate_goes_to_each_schedule_not_tried_near_it() -> None:
    trials = [
        _trial(0.09, "adam", 0.005, "step", **{"step.gamma": 0.3, "warmup": 0.1}),  # the incumbent
        _trial(0.12, "adam", 0.0052, "cosine"),  # cosine tried within 0.1 decade of 0.005: not again
        _trial(0.20, "sgd", 0.005, "constant"),  # another optimizer's constant does not count
        _trial(None, "adam", 0.0049, "exponential", state=TrialState.PRUNED),  # pruned near it: tried
    ]
    assert sweep_params(trials, "minimize") == [{"optimizer": "adam", "lr": 0.005, "warmup": 0.1, "schedule": "constant"}]
    assert [p["schedule"] for p in sweep_params(trials[:1], "minimize")] == ["constant", "cosine", "exponential"]
    assert sweep_params(trials, "maximize")[0]["optimizer"] == "sgd"  # the best is the largest there
    assert sweep_params([trials[3]], "minimize") == []  # nothing finished: no incumbent


LSQ = """
name: {name}
task: least_squares
task_args: {{n_samples: 128, n_features: 10, condition: 30}}
train: {{epochs: 20, batch_size: 128}}
trials: 20
sampler: {sampler}
confirm: false
search:
  lr: {{low: 1.0e-3, high: 3.0}}
  optimizer: {{sgd: {{momentum: 0.0}}}}
  schedule: {{constant: {{}}, cosine: {{}}, step: {{}}}}
pruning: {{curve: {curve}}}
"""


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_a_tpe_study_ends_with_the_sweep_and_random_search_does_not(write_study, stores, sampler, capsys) -> None:
    path = write_study(LSQ.format(name=f"swept-{sampler}", sampler=sampler, curve="none"))
    autolr.tune(path, progress=False, **stores)
    study = optuna.load_study(study_name=f"swept-{sampler}", storage=stores["storage"])
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 20 and all(t.state != TrialState.WAITING for t in trials)
    swept = [t for t in trials if t.user_attrs.get(keys.SOURCE) == "sweep"]
    if sampler == "random":
        assert not swept and keys.SWEEP not in study.user_attrs
        return
    at = study.user_attrs[keys.SWEEP]["at"]  # the sweep's trials are the study's last, however many there are
    before = [t for t in trials[:at] if t.state == TrialState.COMPLETE]
    incumbent = min(before, key=lambda t: t.value)
    expected = sweep_params(trials[:at], "minimize")  # the other schedules, less any tried near its rate
    assert swept and [t.number for t in swept] == list(range(20 - len(swept), 20)) and at == 19 - len(swept)
    assert study.user_attrs[keys.SWEEP] == {"at": at, "target": 20, "enqueued": len(expected)} and len(swept) == len(expected)
    assert [{k: t.params[k] for k in ("lr", "schedule")} for t in swept] == [{k: p[k] for k in ("lr", "schedule")} for p in expected]
    assert {t.params["lr"] for t in swept} == {incumbent.params["lr"]} and incumbent.params["schedule"] not in {t.params["schedule"] for t in swept}
    client = MlflowClient(stores["tracking_uri"])
    runs = client.search_runs([client.get_experiment_by_name("swept-tpe").experiment_id], "tags.`autolr.source` = 'sweep'")
    assert sorted(int(r.data.tags["autolr.trial"]) for r in runs) == [t.number for t in swept]
    capsys.readouterr()
    assert main(["show", str(path), "--storage", stores["storage"], "--top", "20"]) == 0
    table = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if line[:1].isdigit()}
    assert all("sweep" in table[str(t.number)] for t in swept) and "sweep" not in table[str(incumbent.number)]  # the from column


def _study_with(n_complete: int, *, failed: int = 0) -> optuna.Study:
    """A study holding ``n_complete`` finished trials (the best: adam step 0.005), ``failed`` FAIL
    ones, and the trial being asked (RUNNING), as SweepSampler.before_trial sees it."""
    study = optuna.create_study()
    study.add_trial(_trial(0.09, "adam", 0.005, "step"))  # the incumbent
    study.add_trial(_trial(0.5, "adam", 0.0052, "cosine"))  # cosine tried near its rate
    for k in range(n_complete - 2):
        study.add_trial(_trial(1.0 + k, "sgd", 0.1 / (k + 1), "constant"))  # another optimizer's: no bearing
    for _ in range(failed):
        study.add_trial(_trial(None, "sgd", 0.5, "constant", state=TrialState.FAIL))
    study.add_trial(optuna.trial.create_trial(state=TrialState.RUNNING))
    return study


def _sweep(study: optuna.Study, target: int) -> list[str]:
    from autolr.sweep import SweepSampler

    asked = max(t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    SweepSampler(optuna.samplers.RandomSampler(), at=0, trials=target)._enqueue(study, asked)
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    return [t.system_attrs["fixed_params"]["schedule"] for t in waiting if t.user_attrs.get(keys.SOURCE) == "sweep"]


def test_the_sweep_waits_until_it_fills_what_is_left_of_the_target() -> None:
    """Counted in claimed trials (finished and running), not trial numbers: failed trials do not
    count, so the sweep still comes last; with less room than schedules, the first ones."""
    assert _sweep(_study_with(10), 15) == []  # 4 to start after the asked one, 2 schedules to sweep (cosine tried): not yet
    assert _sweep(_study_with(12), 15) == ["constant", "exponential"]  # 2 left: the sweep is the last 2
    assert _sweep(_study_with(12, failed=5), 15) == ["constant", "exponential"]  # failures are not trials of the target
    assert _sweep(_study_with(13), 15) == ["constant"]  # 1 left: the first schedule only
    assert _sweep(_study_with(14), 15) == []  # none left
    study = _study_with(12)
    assert _sweep(study, 15) == ["constant", "exponential"] and study.user_attrs[keys.SWEEP]["target"] == 15
    assert len(_sweep(study, 15)) == 2  # once per target: nothing more queued


def test_a_queued_retry_takes_its_place_before_the_sweep() -> None:
    """A killed or interrupted trial's retry, queued before the sweep, runs first: the sweep counts it,
    or its last trial would wait past the target forever (--jobs 2 stopped by Ctrl-C, then resumed)."""
    study = _study_with(12)
    study.enqueue_trial({"optimizer": "sgd", "lr": 0.5, "schedule": "constant"}, user_attrs={keys.RETRY_OF: 3})
    assert _sweep(study, 15) == ["constant"]  # 2 left after the asked one, 1 of them the retry's
    assert study.user_attrs[keys.SWEEP]["at"] == 12  # the trial asked (the retry, queued after it, is 13)


def test_a_larger_target_sweeps_again() -> None:
    study = _study_with(12)
    _sweep(study, 15)
    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        study._storage.set_trial_state_values(t._trial_id, TrialState.RUNNING)
        study._storage.set_trial_state_values(t._trial_id, TrialState.COMPLETE, [0.7])
    assert _sweep(study, 16) == []  # the incumbent's other schedules are all tried near 0.005 now
    study.add_trial(_trial(0.01, "adam", 0.05, "cosine"))  # a new incumbent
    assert _sweep(study, 19) == ["constant", "step", "exponential"] and study.user_attrs[keys.SWEEP]["target"] == 19


def test_hyperband_hands_the_sweep_its_bracket_and_the_sweep_reads_the_study(write_study, stores) -> None:
    """Hyperband calls the sampler with one bracket's view of the study, which has no user attrs
    and no queue: the sweep works on the study behind it, and the study ends at its target."""
    path = write_study(LSQ.format(name="swept-hb", sampler="tpe", curve="hyperband"))
    autolr.tune(path, progress=False, storage=stores["storage"], tracking_uri=None)
    study = optuna.load_study(study_name="swept-hb", storage=stores["storage"])
    states = [t.state for t in study.trials]
    assert len(states) == 20 and TrialState.RUNNING not in states and TrialState.WAITING not in states
    assert study.user_attrs[keys.SWEEP]["target"] == 20 and study.user_attrs[keys.SWEEP]["enqueued"] >= 1
    assert sum(t.user_attrs.get(keys.SOURCE) == "sweep" for t in study.trials) == study.user_attrs[keys.SWEEP]["enqueued"]
