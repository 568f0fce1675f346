"""Winners that hold: the top configurations re-trained on fresh seeds, the export naming the best mean."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

import autolr
import autolr.tasks
from autolr import confirm, keys
from autolr.cli import main
from autolr.config import ConfirmConfig, load_study
from autolr.errors import StudyFileError

STUDY = """
name: {name}
task: least_squares
task_args: {{n_samples: 64, n_features: 8, condition: 10}}
train: {{epochs: 2, batch_size: 16}}
trials: {trials}
sampler: random
search:
  lr: {{low: 1.0e-3, high: 0.3}}
  optimizer: {{sgd: {{momentum: 0.9}}}}
  schedule: {{constant: {{}}, cosine: {{}}}}
pruning: {{curve: none}}
{confirm}
"""


def _study(write_study, name: str, *, trials: int = 4, confirm_line: str = "confirm: {top: 2, seeds: 2, step_back: false}") -> str:
    return str(write_study(STUDY.format(name=name, trials=trials, confirm=confirm_line), f"{name}.yaml"))


def test_the_plan_spends_at_most_a_quarter_of_the_study() -> None:
    assert ConfirmConfig().plan(24) == (2, 3)  # 6 runs for 24 trials
    assert ConfirmConfig().plan(40) == (3, 3)  # 9 of 40
    assert ConfirmConfig().plan(8) == (1, 2)
    assert ConfirmConfig().plan(3) == (1, 1)  # at least one configuration on one fresh seed
    assert ConfirmConfig(top=4, seeds=5).plan(8) == (4, 5)  # given explicitly: as given


def test_confirmation_runs_after_the_search_and_the_export_holds_the_spread(write_study, stores, tmp_path, capsys) -> None:
    path = _study(write_study, "held")
    result = autolr.tune(path, progress=False, **stores)
    assert len(result.confirmations) == 2
    for c in result.confirmations:
        assert c.complete and c.seeds == (1000, 2000) and len(c.values) == 2  # fresh seeds, not the study's
    winner = confirm.confirmed_winner(result.confirmations, "minimize")
    assert winner.mean == min(c.mean for c in result.confirmations)
    assert sum(t.state.name == "COMPLETE" for t in result.trials) + sum(t.state.name == "PRUNED" for t in result.trials) == 4  # the search is untouched

    out = tmp_path / "best.yaml"
    autolr.export_best(path, storage=stores["storage"], path=out)
    best = autolr.load_best(out)
    assert best.value == pytest.approx(winner.mean) and best.trial == winner.trial
    assert best.confirmed["values"] == list(winner.values) and best.confirmed["std"] == pytest.approx(winner.std)
    assert best.single_seed_value == pytest.approx(result.trials[winner.trial].value)
    assert result.confirmed == winner and result.winner.number == best.trial  # the API names what the export names
    assert result.winner.user_attrs["autolr.params"] == best.params

    client = MlflowClient(stores["tracking_uri"])
    exp = client.get_experiment_by_name("held")
    runs = client.search_runs([exp.experiment_id], "tags.`autolr.role` = 'confirm'")
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    assert {(r.data.tags["autolr.confirm_of"], r.data.tags["autolr.seed"]) for r in runs} == {
        (str(c.trial), str(s)) for c in result.confirmations for s in (1000, 2000)
    }
    assert all("mlflow.parentRunId" in r.data.tags and len(client.get_metric_history(r.info.run_id, "train_loss")) == 8 for r in runs)

    assert main(["show", path, "--storage", stores["storage"]]) == 0
    shown = capsys.readouterr().out
    assert "fresh seeds" in shown and f"winner on fresh seeds: trial {winner.trial}" in shown
    assert f"{winner.mean:.4g} +- " in shown  # the confirmed mean beside the single-seed value


def test_the_default_confirmation_races_within_its_budget(write_study, stores, tmp_path) -> None:
    """``top`` left to autolr, end to end: at most a quarter of the trials in runs, candidates in the
    order of their search values with none skipped before the last one tried, the export the best
    complete mean, and what show/export read is what the runs were."""
    path = _study(write_study, "raced", trials=16, confirm_line="confirm: {seeds: 1, step_back: false}")  # 4 runs: up to 4 candidates
    result = autolr.tune(path, progress=False, **stores)
    confirm_study = optuna.load_study(study_name="raced.confirm", storage=stores["storage"])
    assert confirm_study.user_attrs[keys.CONFIRM_PLAN]["budget"] == 4
    runs = confirm_study.get_trials(deepcopy=False)
    assert 1 <= len(runs) <= 4 and len({(t.user_attrs[keys.CONFIRM_OF], t.user_attrs[keys.SEED]) for t in runs}) == len(runs)
    ranked = [t.number for t in confirm.candidates(optuna.load_study(study_name="raced", storage=stores["storage"]), 16)]
    tried = [c.trial for c in result.confirmations]
    assert tried == ranked[: len(tried)] and [t.user_attrs[keys.CONFIRM_OF] for t in runs] == tried  # in order, one seed each
    complete = [c for c in result.confirmations if c.complete]
    winner = confirm.confirmed_winner(result.confirmations, "minimize")
    assert winner is not None and winner.mean == min(c.mean for c in complete)
    for later in result.confirmations[1:]:  # each was worth trying: its search value beat the best mean before it
        before = [c.mean for c in result.confirmations[: result.confirmations.index(later)] if c.complete]
        assert not before or later.single_seed_value < min(before)
    export = yaml.safe_load(autolr.export_best(path, storage=stores["storage"]))
    assert export["confirmed"]["trial"] == winner.trial and export["confirmation"] == "complete"


def test_the_winner_steps_back_and_the_export_names_what_held(write_study, stores, tmp_path, monkeypatch, capsys) -> None:
    """By default the race's winner is trained again at 0.7x its rate on the same seeds; the export
    names the step back when it held (here forced: any mean holds), with the rate it trained."""
    monkeypatch.setattr(confirm, "_held_up", lambda back, winner, direction: True)
    path = _study(write_study, "stepped", trials=8, confirm_line="confirm: {seeds: 2}")
    result = autolr.tune(path, progress=False, **stores)
    *raced, back = result.confirmations
    best = confirm.confirmed_winner(raced, "minimize")
    searched = result.trials[best.trial]
    assert back.lr_scale == 0.7 and back.trial == best.trial and back.complete and back.seeds == (1000, 2000)
    assert back.params["lr"] == pytest.approx(0.7 * searched.params["lr"]) and back.params["schedule"] == searched.params["schedule"]
    assert result.confirmed is back and result.winner.number == best.trial and result.winner_params == back.params
    shown = repr(result)  # what a notebook cell shows: one line, the export's configuration and its confirmed value
    assert "\n" not in shown and shown.startswith("TuneResult(study='stepped', 8 trials (") and len(shown) < 400, shown
    assert f"lr={back.params['lr']:.4g}" in shown and f"val_loss {back.mean:.4g} +- {back.std:.4g} on 2 fresh seeds" in shown, shown

    out = tmp_path / "best.yaml"
    autolr.export_best(path, storage=stores["storage"], path=out)
    exported = autolr.load_best(out)
    assert exported.params == back.params and exported.trial == best.trial and exported.value == pytest.approx(back.mean)
    assert exported.confirmed["lr_scale"] == 0.7 and exported.confirmed["values"] == list(back.values)
    assert exported.build_optimizer([torch.nn.Parameter(torch.zeros(1))]).param_groups[0]["lr"] == pytest.approx(back.params["lr"])

    client = MlflowClient(stores["tracking_uri"])
    runs = client.search_runs([client.get_experiment_by_name("stepped").experiment_id], "tags.`autolr.lr_scale` = '0.7'")
    assert sorted(r.info.run_name for r in runs) == [f"confirm-{best.trial}-lr0.7x-seed{s}" for s in (1000, 2000)]
    assert all(r.data.params["lr"] == str(back.params["lr"]) for r in runs)
    exported = client.search_runs([client.get_experiment_by_name("stepped").experiment_id], "tags.`autolr.exported` = 'true'")
    assert sorted(r.info.run_id for r in exported) == sorted(r.info.run_id for r in runs)  # the trials view's column: what the export names

    assert main(["show", path, "--storage", stores["storage"]]) == 0
    shown = capsys.readouterr().out
    assert f"step back: trial {best.trial} at 0.7x its lr ({back.params['lr']:.3g})" in shown
    assert f"winner on fresh seeds: trial {best.trial} at 0.7x its lr" in shown
    assert "(exported; a step back within 3% and one standard error of the rate above it is preferred" in shown  # why a worse mean can win

    # a confirmation stored before the step back existed is read by the rules it ran under: no step back
    confirm_study = optuna.load_study(study_name="stepped.confirm", storage=stores["storage"])
    plan = confirm_study.user_attrs[keys.CONFIRM_PLAN]
    assert plan["step_back"] == 0.7 and plan["near"] == confirm.NEAR_DECADES and plan["slack"] == confirm.DROP_SLACK
    confirm_study.set_user_attr(keys.CONFIRM_PLAN, {k: plan[k] for k in ("top", "seeds", "budget")})
    old = autolr.study_results(path, storage=stores["storage"])
    assert [c.lr_scale for c in old.confirmations] == [1.0] * len(raced) and old.confirmed == best


def test_an_interrupted_confirmation_resumes_where_it_stopped(write_study, stores, monkeypatch, capsys, caplog) -> None:
    path = _study(write_study, "resumed", confirm_line="confirm: {top: 1, seeds: 3, step_back: false}")
    real = confirm.run_confirmation
    calls = {"n": 0}

    def interrupting_objective(make_objective):
        def make(seeded):
            objective = make_objective(seeded)

            def run(trial):
                calls["n"] += 1
                if calls["n"] == 2:
                    raise KeyboardInterrupt
                return objective(trial)

            return run

        return make

    monkeypatch.setattr("autolr.study.run_confirmation", lambda *a, make_objective, **k: real(*a, make_objective=interrupting_objective(make_objective), **k))
    with pytest.raises(KeyboardInterrupt):
        autolr.tune(path, progress=False, **stores)
    monkeypatch.setattr("autolr.study.run_confirmation", real)
    capsys.readouterr()
    assert main(["show", str(path), "--storage", stores["storage"]]) == 0
    assert " (1 so far)" in capsys.readouterr().out  # one fresh seed stored, nothing claimed to be running
    assert main(["export", str(path), "--storage", stores["storage"], "-o", str(Path(path).parent / "mid.yaml")]) == 0
    assert "its confirmation is not over, so this export is the best single-seed trial" in caplog.text  # a warning on stderr
    assert main(["tune", str(path), "--storage", stores["storage"], "--tracking-uri", stores["tracking_uri"]]) == 0
    assert "already holds" not in capsys.readouterr().err  # it resumed the confirmation
    result = autolr.study_results(path, storage=stores["storage"])
    (c,) = result.confirmations
    assert c.complete and c.seeds == (1000, 2000, 3000)
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in result.trials) == 4  # no search trial added
    again = autolr.tune(path, progress=False, **stores)  # nothing left to do
    assert [x.values for x in again.confirmations] == [c.values]


def test_confirmation_can_be_turned_off(write_study, stores) -> None:
    path = _study(write_study, "unconfirmed", confirm_line="confirm: false")
    result = autolr.tune(path, progress=False, **stores)
    assert result.confirmations == []
    export = yaml.safe_load(autolr.export_best(path, storage=stores["storage"]))
    assert export["confirmed"] is None and export["value"] == result.best.value
    assert result.confirmed is None and result.winner is result.best


def test_a_winner_must_hold_on_every_fresh_seed() -> None:
    held = confirm.Confirmation(3, 0.10, (1000, 2000), (0.12, 0.14), complete=True)
    lucky = confirm.Confirmation(5, 0.05, (1000,), (0.30,), complete=False, dropped="diverged: loss nan at step 12")
    better = confirm.Confirmation(7, 0.11, (1000, 2000), (0.11, 0.12), complete=True)
    assert confirm.confirmed_winner([lucky, held, better], "minimize") is better
    assert confirm.confirmed_winner([lucky], "minimize") is None
    assert confirm.confirmed_winner([held, better], "maximize") is held


def _searched(values: list[float]) -> list:
    """Search trials #0, #1, ... with these single-seed values (the candidates, best first)."""
    return [
        optuna.trial.create_trial(value=v, params={"lr": 10.0**-k}, distributions={"lr": FloatDistribution(1e-9, 1.0, log=True)}) for k, v in enumerate(values)
    ]


def _ran(of: int, seed: int, value: float | None, *, state=None, scale: float | None = None):
    """A stored confirmation run of search trial ``of`` on ``seed`` (None: it diverged; ``scale``: a step back's)."""
    attrs = {keys.CONFIRM_OF: of, keys.SEED: seed} | ({keys.LR_SCALE: scale, keys.PARAMS: {"lr": scale * 10.0**-of}} if scale else {})
    if value is None:
        return optuna.trial.create_trial(state=state or TrialState.PRUNED, user_attrs={**attrs, keys.PRUNE_REASON: "diverged: loss nan"})
    return optuna.trial.create_trial(value=value, user_attrs=attrs)


def _race(searched: list, runs: list, *, budget: int | None = 7, seeds=(11, 12, 13), direction: str = "minimize", step_back: float | None = None):
    picked = _searched(searched)
    for number, t in enumerate(picked):
        t.number = number
    stored = []
    for number, run in enumerate(runs):
        run.number = number
        stored.append(run)
    return confirm._walk(picked, stored, list(seeds), budget, direction, step_back=step_back)


def test_the_race_ends_when_the_winner_held() -> None:
    """The best search value confirmed at 0.105: the next candidate's search value (0.11) is its
    best draw, and it does not beat 0.105, so it is not trained: 3 runs of the 7 the budget allows."""
    done, following = _race([0.10, 0.11, 0.12], [_ran(0, 11, 0.10), _ran(0, 12, 0.11), _ran(0, 13, 0.105)])
    assert following is None
    assert [c.trial for c in done] == [0] and done[0].complete and confirm.confirmed_winner(done, "minimize").trial == 0


def test_a_lucky_winner_makes_the_race_go_on_and_a_started_candidate_runs_every_seed() -> None:
    """#0 looked best (0.066) and regressed on fresh seeds (mean 0.137): #1 is tried. Its first two
    seeds (0.107, 0.109) say little: it runs its third (0.061) and wins with 0.092. #2 would not fit
    the 7 runs."""
    runs = [_ran(0, 11, 0.143), _ran(0, 12, 0.114), _ran(0, 13, 0.153), _ran(1, 11, 0.107), _ran(1, 12, 0.109)]
    done, following = _race([0.066, 0.079, 0.087, 0.088], runs)
    assert following[0].number == 1 and following[1:] == (13, 1.0) and not done[1].dropped  # what is trained next
    runs.append(_ran(1, 13, 0.061))
    done, following = _race([0.066, 0.079, 0.087, 0.088], runs)
    assert following is None and [c.trial for c in done] == [0, 1]  # 6 runs: #2's 3 do not fit 7
    assert confirm.confirmed_winner(done, "minimize").trial == 1


def test_a_hopeless_candidate_is_dropped_after_one_seed() -> None:
    """#1 read 0.78 on its first fresh seed: even with its other two 30% better than its search value
    (0.079) its mean would be 0.30, above #0's 0.137. Dropped after 1 run, so #2 fits the 7."""
    runs = [_ran(0, 11, 0.143), _ran(0, 12, 0.114), _ran(0, 13, 0.153), _ran(1, 11, 0.78)]
    done, following = _race([0.066, 0.079, 0.087, 0.088], runs)
    assert done[1].dropped.startswith("cannot beat #0's confirmed mean 0.1367") and not done[1].complete
    assert following[0].number == 2 and following[1] == 11
    runs += [_ran(2, 11, 0.09), _ran(2, 12, 0.085), _ran(2, 13, 0.092)]
    done, following = _race([0.066, 0.079, 0.087, 0.088], runs)
    assert following is None and [c.trial for c in done] == [0, 1, 2]  # 7 runs: #3 does not fit
    assert confirm.confirmed_winner(done, "minimize").trial == 2


def test_the_step_back_follows_the_winner_and_is_exported_when_it_holds() -> None:
    held = [_ran(0, 11, 0.10), _ran(0, 12, 0.11), _ran(0, 13, 0.105)]
    done, following = _race([0.10, 0.11], held, step_back=0.7)
    assert following[0].number == 0 and following[1:] == (11, 0.7)  # after the race: #0 at 0.7x its rate
    assert confirm.confirmed_winner(done, "minimize") is None  # not over yet
    within = [_ran(0, s, v, scale=0.7) for s, v in ((11, 0.105), (12, 0.11), (13, 0.105))]  # mean 0.1067: within 3% of 0.105
    done, following = _race([0.10, 0.11], held + within, step_back=0.7)
    winner = confirm.confirmed_winner(done, "minimize")
    assert following is None and winner.lr_scale == 0.7 and winner.trial == 0 and winner.params == {"lr": 0.7}
    assert winner.to_dict()["lr_scale"] == 0.7 and "lr_scale" not in done[0].to_dict()
    assert confirm.Confirmation(0, 0.1, (1,), (0.1,), True, lr_scale=0.7**2).to_dict()["lr_scale"] == 0.49  # not 0.48999999999999994
    worse = [_ran(0, s, v, scale=0.7) for s, v in ((11, 0.11), (12, 0.112), (13, 0.11))]  # mean 0.1107: 5% worse
    assert confirm.confirmed_winner(_race([0.10, 0.11], held + worse, step_back=0.7)[0], "minimize").lr_scale == 1.0
    diverged = [_ran(0, 11, None, scale=0.7)]
    done, following = _race([0.10, 0.11], held + diverged, step_back=0.7)
    assert following is None and done[-1].dropped and confirm.confirmed_winner(done, "minimize").lr_scale == 1.0
    interrupted = [_ran(0, 11, None, state=TrialState.FAIL, scale=0.7)]  # no error: trained again
    assert _race([0.10, 0.11], held + interrupted, step_back=0.7)[1][1:] == (11, 0.7)


def test_a_clear_gain_takes_another_step_back_up_to_three() -> None:
    """A winner over the edge (digits wide, study seed 2: 0.163 on fresh seeds, 0.126 at 0.7x): each
    step back clearly better than the rate above it (by more than that one's standard error) is
    followed by another, on the same seeds, at most 3 (0.7x, 0.49x, 0.343x); the last one that held
    up is exported."""
    held = [_ran(0, 11, 0.154), _ran(0, 12, 0.199), _ran(0, 13, 0.158)]
    back1 = [_ran(0, s, v, scale=0.7) for s, v in ((11, 0.123), (12, 0.119), (13, 0.135))]
    done, following = _race([0.10], held + back1, step_back=0.7)
    assert following[0].number == 0 and following[1:] == (11, 0.7**2)
    assert confirm.confirmed_winner(done, "minimize") is None  # not over yet
    back2 = [_ran(0, s, v, scale=0.7**2) for s, v in ((11, 0.110), (12, 0.112), (13, 0.108))]
    done, following = _race([0.10], held + back1 + back2, step_back=0.7)
    assert following[1:] == (11, 0.7**3)
    no_gain = [_ran(0, s, v, scale=0.7**3) for s, v in ((11, 0.111), (12, 0.113), (13, 0.112))]  # 0.112: 2% worse, over the 0.49x's standard error
    done, following = _race([0.10], held + back1 + back2 + no_gain, step_back=0.7)
    assert following is None and [c.lr_scale for c in done] == [1.0, 0.7, 0.7**2, 0.7**3]
    assert confirm.confirmed_winner(done, "minimize").lr_scale == 0.7**2
    as_good = [_ran(0, s, v, scale=0.7**3) for s, v in ((11, 0.109), (12, 0.112), (13, 0.108))]  # 0.1097: held up, exported
    done, following = _race([0.10], held + back1 + back2 + as_good, step_back=0.7)
    assert following is None and confirm.confirmed_winner(done, "minimize").lr_scale == 0.7**3
    # a step back within the noise of the rate above it takes no further step: one step, as before the chain
    noise = [_ran(0, s, v, scale=0.7) for s, v in ((11, 0.150), (12, 0.190), (13, 0.160))]  # 0.1667 vs 0.1703 +- 0.0146
    done, following = _race([0.10], held + noise, step_back=0.7)
    assert following is None and [c.lr_scale for c in done] == [1.0, 0.7] and confirm.confirmed_winner(done, "minimize").lr_scale == 0.7


def test_where_the_seeds_agree_the_step_back_must_be_as_good() -> None:
    """The tolerance is 3% or the winner's standard error, whichever is less: seeds that agree (a
    full-batch problem) leave nothing to trade, and a 2% slower rate would be 2% lost."""
    agreed = [_ran(0, s, 0.100) for s in (11, 12, 13)]
    slower = [_ran(0, s, 0.102, scale=0.7) for s in (11, 12, 13)]
    assert confirm.confirmed_winner(_race([0.10], agreed + slower, step_back=0.7)[0], "minimize").lr_scale == 1.0
    as_good = [_ran(0, s, 0.100, scale=0.7) for s in (11, 12, 13)]
    assert confirm.confirmed_winner(_race([0.10], agreed + as_good, step_back=0.7)[0], "minimize").lr_scale == 0.7
    spread = [_ran(0, 11, 0.08), _ran(0, 12, 0.10), _ran(0, 13, 0.12)]  # standard error 0.0115: 3% (0.003) is less
    assert confirm.confirmed_winner(_race([0.10], spread + slower, step_back=0.7)[0], "minimize").lr_scale == 0.7
    further = [_ran(0, s, 0.1035, scale=0.7) for s in (11, 12, 13)]
    assert confirm.confirmed_winner(_race([0.10], spread + further, step_back=0.7)[0], "minimize").lr_scale == 1.0


def test_the_step_back_maximizes_follows_an_explicit_top_and_stays_in_the_range() -> None:
    held = [_ran(0, 11, 0.95), _ran(0, 12, 0.96)]  # standard error 0.005
    back = [_ran(0, 11, 0.95, scale=0.5), _ran(0, 12, 0.952, scale=0.5)]  # 0.004 below 0.955: held
    done, following = _race([0.99], held + back, seeds=(11, 12), budget=None, direction="maximize", step_back=0.5)
    assert following is None and confirm.confirmed_winner(done, "maximize").lr_scale == 0.5
    done, following = _race([0.99], held, seeds=(11, 12), budget=None, direction="maximize", step_back=0.5)
    assert following[1:] == (11, 0.5)  # top given: the step back follows the last candidate's seeds
    picked = _searched([0.1])  # lr 1 in [1e-9, 1]; the range's low end at 0.8: a step back would leave it
    picked[0] = optuna.trial.create_trial(value=0.1, params={"lr": 1.0}, distributions={"lr": FloatDistribution(0.8, 1.0, log=True)})
    picked[0].number = 0
    done, following = confirm._walk(picked, [_ran(0, 11, 0.1)], [11], 7, "minimize", step_back=0.7)
    assert following is None and [c.lr_scale for c in done] == [1.0]


def test_near_duplicates_are_one_candidate() -> None:
    """A search closing in on a rate leaves several trials there; the race spends its runs once on it."""
    study = optuna.create_study()
    dists = {"lr": FloatDistribution(1e-5, 1.0, log=True), "schedule": optuna.distributions.CategoricalDistribution(["constant", "step"])}
    for lr, schedule, value in (
        (0.0386, "constant", 0.0770),
        (0.0394, "constant", 0.07704),
        (0.0419, "constant", 0.0778),
        (0.0063, "step", 0.0855),
        (0.055, "constant", 0.08),
    ):
        study.add_trial(optuna.trial.create_trial(value=value, params={"lr": lr, "schedule": schedule}, distributions=dists))
    assert [t.number for t in confirm.candidates(study, 3)] == [0, 4, 3]  # 0.0394 and 0.0419 are 0.0386 again; 0.055 (0.15 decades) is not
    assert [t.number for t in confirm.candidates(study, 3, near=0.0)] == [0, 1, 2]  # a plan stored before: exact duplicates only


def test_the_race_resumes_from_its_runs_and_drops_what_diverges() -> None:
    # interrupted after #0's first seed: its second is next, whoever resumes it
    assert _race([0.1, 0.2], [_ran(0, 11, 0.12)])[1][1] == 12
    # an interrupted run (FAIL, no error) is trained again
    assert _race([0.1, 0.2], [_ran(0, 11, 0.12), _ran(0, 12, None, state=TrialState.FAIL)])[1][1] == 12
    # #0 diverged on its first fresh seed: dropped, and #1 is tried (nothing to beat yet)
    done, following = _race([0.1, 0.2], [_ran(0, 11, None)])
    assert done[0].dropped and following[0].number == 1 and following[1] == 11


def test_the_race_maximizes_too_and_keeps_to_its_budget() -> None:
    done, following = _race([0.99, 0.98, 0.90], [_ran(0, 11, 0.95), _ran(0, 12, 0.96), _ran(0, 13, 0.94)], direction="maximize")
    assert following[0].number == 1  # 0.98 could beat the confirmed 0.95
    done, following = _race([0.99, 0.98], [_ran(0, 11, 0.95), _ran(0, 12, 0.96), _ran(0, 13, 0.94)], direction="maximize", budget=5)
    assert following is None and len(done) == 1  # a second candidate's 3 runs do not fit 5


def test_the_default_plan_races_and_an_explicit_top_runs_every_pair() -> None:
    assert ConfirmConfig().budget(30) == 7 and ConfirmConfig().budget(8) == 2
    assert ConfirmConfig(top=2).budget(30) is None


def test_bad_confirm_settings_are_one_line(write_study) -> None:
    with pytest.raises(StudyFileError, match=r"confirm.seeds: expected an integer >= 1, got 0"):
        load_study(_study(write_study, "bad", confirm_line="confirm: {seeds: 0}"))
    with pytest.raises(StudyFileError, match=r"confirm.runs: expected one of the keys \['seeds', 'step_back', 'top'\]"):
        load_study(_study(write_study, "bad2", confirm_line="confirm: {runs: 3}"))
    with pytest.raises(StudyFileError, match=r"confirm.step_back: expected a factor in \(0, 1\) or false, got 1.5"):
        load_study(_study(write_study, "bad3", confirm_line="confirm: {step_back: 1.5}"))
    assert load_study(_study(write_study, "no-step-back", confirm_line="confirm: {step_back: false}")).confirm.step_back is None
    assert load_study(_study(write_study, "half", confirm_line="confirm: {step_back: 0.5}")).confirm.step_back == 0.5


def test_seed_per_trial_gives_each_search_trial_its_own_seed_and_keeps_the_fresh_seeds_apart(write_study, stores) -> None:
    seen: list[tuple[int, float]] = []  # (the seed the task was built under, its first weight)

    def make(**kwargs):
        task = autolr.tasks.least_squares(**kwargs)
        seen.append((torch.initial_seed(), float(task.model.weight[0, 0].detach())))
        return task

    text = STUDY.format(name="per-trial", trials=4, confirm="confirm: {top: 1, seeds: 2}").replace("task: least_squares\n", "")
    path = write_study(text.replace("batch_size: 16}", "batch_size: 16, seed_per_trial: true}"), "per-trial.yaml")
    result = autolr.tune(str(path), task=make, seed=7, progress=False, **stores)
    search = [t.user_attrs["autolr.seed"] for t in result.trials]
    assert search == [7, 8, 9, 10]  # trial n on the study's seed + n
    built = {s for s, _ in seen}
    assert set(search) <= built and {1007, 2007} <= built  # the search's seeds, then the confirmation's fresh ones
    assert len({w for s, w in seen if s in search}) == 4  # different initial weights per trial
    assert not set(search) & set(result.confirmations[0].seeds)
    assert result.confirmations[0].seeds == (1007, 2007)
    exported = yaml.safe_load(autolr.export_best(str(path), storage=stores["storage"]))
    assert exported["trial_seed"] == 7 + exported["trial"]  # what reproduces its single_seed_value
    assert exported["seed"] == 7  # the study's, as tune was given it (the file says 0)


def test_trial_seeds_never_reach_a_fresh_seed() -> None:
    from autolr.seeds import SEED_STRIDE, fresh_seed, trial_seed

    search = [trial_seed(5, n) for n in range(3 * SEED_STRIDE)]
    assert search[:3] == [5, 6, 7] and len(set(search)) == len(search)
    assert not set(search) & {fresh_seed(5, k) for k in range(1, 10)}  # trial 999 is 1004, trial 1000 is 1006: 1005 skipped
    assert trial_seed(5, 999) == 5 + 999 and trial_seed(5, 1000) == 5 + 1001


def test_without_seed_per_trial_every_search_trial_trains_on_the_study_seed(write_study, stores) -> None:
    seeds: list[int] = []

    def make(**kwargs):
        seeds.append(torch.initial_seed())
        return autolr.tasks.least_squares(**kwargs)

    path = write_study(STUDY.format(name="one-seed", trials=3, confirm="confirm: false").replace("task: least_squares\n", ""), "one-seed.yaml")
    result = autolr.tune(str(path), task=make, seed=7, progress=False, **stores)
    assert set(seeds) == {7} and all(t.user_attrs["autolr.seed"] == 7 for t in result.trials)  # recorded for the export
    assert yaml.safe_load(autolr.export_best(str(path), storage=stores["storage"]))["seed"] == 7  # the file says 0


def test_one_fresh_seed_has_no_spread() -> None:
    """A small study confirms on one seed: its spread is unknown (null in the export, none printed),
    not 0; its standard error counts as 0, so a step back must be as good to be taken."""
    from autolr.cli import _confirmed

    one = confirm.Confirmation(trial=3, single_seed_value=0.1, seeds=(11,), values=(0.125,), complete=True)
    assert one.std is None and one.standard_error == 0.0 and one.to_dict()["std"] is None
    assert _confirmed(one) == "0.125 (1)"
    two = confirm.Confirmation(trial=3, single_seed_value=0.1, seeds=(11, 12), values=(0.12, 0.13), complete=True)
    assert _confirmed(two) == "0.125 +- 0.0071 (2)"
    back = confirm.Confirmation(trial=3, single_seed_value=0.1, seeds=(11,), values=(0.126,), complete=True, lr_scale=0.7)
    assert confirm.confirmed_winner([one, back], "minimize") is one
    # nor does a gain on one seed take a further step back: it could be that seed's noise
    done, following = _race([0.10], [_ran(0, 11, 0.2), _ran(0, 11, 0.1, scale=0.7)], seeds=(11,), step_back=0.7)
    assert following is None and [c.lr_scale for c in done] == [1.0, 0.7] and confirm.confirmed_winner(done, "minimize").lr_scale == 0.7


def test_fresh_seeds_that_change_nothing_are_warned_about(write_study, stores, caplog) -> None:
    """A loop that seeds itself trains the same run on every fresh seed: a spread of 0 that says nothing."""

    def train(trial: autolr.Trial) -> float:
        torch.manual_seed(0)  # the user's own seeding, over autolr's
        w = torch.nn.Parameter(torch.randn(1))
        optimizer = trial.build_optimizer([w])
        for _ in range(3):
            optimizer.zero_grad()
            loss = (w**2).sum()
            loss.backward()
            trial.step(loss)
            optimizer.step()
        return float(w.item() ** 2)

    path = write_study("name: self-seeded\ntrials: 3\nconfirm: {top: 1, seeds: 2, step_back: false}\nsearch: {lr: {low: 0.01, high: 0.1}}\n")
    with caplog.at_level("WARNING", logger="autolr.confirm"):
        autolr.tune(path, loop=train, progress=False, storage=stores["storage"], tracking_uri=None)
    (record,) = [r for r in caplog.records if r.name == "autolr.confirm"]
    assert "fresh seeds, so they say nothing of how it holds: its training does not depend on the seed (the loop seeds itself" in record.getMessage()
    assert "a loop gets the seed as trial.seed" in record.getMessage()


def test_a_confirmation_resumed_with_jobs_spawns_no_worker_and_says_none(write_study, stores) -> None:
    """The search at its target: no worker is started for the confirmation, and the timing line does
    not count one (it read '1 of 2 workers trained', of a worker that never started)."""
    searched = _study(write_study, "resumed-jobs", trials=4, confirm_line="confirm: false")
    autolr.tune(searched, progress=False, storage=stores["storage"], tracking_uri=None)
    confirming = _study(write_study, "resumed-jobs", trials=4, confirm_line="confirm: {top: 1, seeds: 2, step_back: false}")
    result = autolr.tune(confirming, jobs=2, progress=False, storage=stores["storage"], tracking_uri=None)
    assert [len(c.values) for c in result.confirmations] == [2]  # the confirmation ran, here
    assert (result.jobs, result.processes) == (1, 1)
    assert len(result.timing()) == 1 and "workers" not in result.timing()[0]


def test_the_parent_run_says_when_the_export_is_its_trials_step_back() -> None:
    from autolr.report import best_tags

    stepped = {"trial": 4, "value": 0.09, "confirmed": {"trial": 4, "mean": 0.09, "lr_scale": 0.49}}
    assert best_tags(stepped) == {keys.BEST_TRIAL: 4, keys.BEST_VALUE: 0.09, keys.BEST_LR_SCALE: "0.49"}  # best.lr is 0.49x trial 4's
    assert keys.BEST_LR_SCALE not in best_tags({"trial": 4, "value": 0.1, "confirmed": None}) and best_tags(None) == {}


@pytest.mark.parametrize("whose", ["another process", "this process"])
def test_a_run_another_live_process_is_training_is_waited_for_not_trained_twice(write_study, stores, whose: str) -> None:
    """Two invocations on one study both reach the confirmation: the second saw the first's RUNNING
    run as a missing seed and trained it too (a walkthrough's finding: `confirm-3-seed1000` twice in
    MLflow). A run RUNNING in another live process of this machine is now waited for, and each run
    is started under the study's claim lock. One this process left RUNNING (a Ctrl-C before its
    training began, in a notebook) is nobody's to finish: it is trained again, never waited on."""
    import subprocess
    import sys
    import threading
    import time

    from autolr import owner
    from autolr.claim import start_owned
    from autolr.seeds import fresh_seed

    path = _study(write_study, "shared-confirm", confirm_line="confirm: {top: 1, seeds: 2, step_back: false}")
    url = stores["storage"]
    config = load_study(path)
    autolr.tune(dataclasses.replace(config, confirm=ConfirmConfig(enabled=False)), storage=url, tracking_uri=None, progress=False)
    best = optuna.load_study(study_name="shared-confirm", storage=url).best_trial
    other = confirm._open(config, url)  # its run of the first fresh seed, RUNNING in a live process
    first = fresh_seed(config.seed, 1)
    running = start_owned(other, dict(best.params), {keys.CONFIRM_OF: best.number, keys.SEED: first, keys.SOURCE: "confirm"})
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        if whose == "another process":
            running.set_user_attr(keys.OWNER, {"machine": owner.this_process()["machine"], "pid": sleeper.pid, "start": owner._start_ticks(sleeper.pid)})
        helper = threading.Thread(target=lambda: (time.sleep(3.0), other.tell(running, 0.123)) if whose == "another process" else None)
        helper.start()
        started = time.monotonic()
        result = autolr.tune(path, storage=url, tracking_uri=None, progress=False)
        took = time.monotonic() - started
        helper.join()
    finally:
        sleeper.kill()
        sleeper.wait()
    runs = optuna.load_study(study_name="shared-confirm.confirm", storage=url).trials
    done = sorted(t.user_attrs[keys.SEED] for t in runs if t.state.name == "COMPLETE")
    assert done == [first, fresh_seed(config.seed, 2)], [(t.user_attrs[keys.SEED], t.state.name) for t in runs]  # each seed once
    if whose == "another process":
        assert result.confirmed is not None and 0.123 in result.confirmed.values and took >= 2.5  # waited, and its value counts
    else:
        assert result.confirmed is not None and 0.123 not in result.confirmed.values and took < 60  # trained again, not waited on
