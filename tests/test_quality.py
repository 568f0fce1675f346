"""What the tuner finds and what divergence costs, on problems whose answers are known exactly."""

from __future__ import annotations

import optuna
import pytest
from mlflow.tracking import MlflowClient

import autolr
from autolr.tasks import least_squares

LSQ = """
name: {name}
task: least_squares
task_args: {{n_samples: 256, n_features: 20, max_eig: 1.0, condition: 100, noise: 0.3}}
train: {{epochs: 60, batch_size: 256}}
trials: {trials}
seed: {seed}
search:
  lr: {{low: {low}, high: {high}}}
  optimizer: {{sgd: {{momentum: 0.0}}}}
  schedule: {schedules}
pruning: {{divergence: true, curve: none}}
"""


def _diverged_share(trials) -> float:
    steps = [(t.user_attrs["autolr.steps"], bool(t.user_attrs.get("autolr.diverged"))) for t in trials]
    return sum(s for s, d in steps if d) / sum(s for s, _ in steps)


@pytest.mark.parametrize("seed", [0, 1])
def test_least_squares_best_is_within_1_3x_of_the_exact_optimum(write_study, stores, seed) -> None:
    path = write_study(LSQ.format(name="lsq", trials=30, seed=seed, low=1e-4, high=100.0, schedules="[constant, cosine]"))
    result = autolr.tune(path, storage=stores["storage"], tracking_uri=None)
    optimum = least_squares(n_samples=256, n_features=20, condition=100, noise=0.3).info["optimum"]
    assert result.best.value <= 1.3 * optimum
    assert _diverged_share(result.trials) <= 0.10


def test_mostly_divergent_range_prunes_each_divergent_trial_fast_and_cheaply(write_study, stores) -> None:
    # 2/L = 2: everything above lr 2 diverges, i.e. 90% of the log range [0.5, 1000]
    path = write_study(LSQ.format(name="diverging", trials=20, seed=0, low=0.5, high=1000.0, schedules="[constant]"))
    result = autolr.tune(path, **stores)
    diverged = [t for t in result.trials if t.user_attrs.get("autolr.diverged")]
    assert len(diverged) >= 3
    for t in diverged:
        assert t.state == optuna.trial.TrialState.PRUNED
        assert t.params["lr"] > 2.0  # nothing stable was called divergent
        assert t.user_attrs["autolr.prune_reason"].startswith("diverged: ")
        assert t.user_attrs["autolr.prune_reason"].endswith(f"at step {t.user_attrs['autolr.divergence_step']}")
    assert all(t.params["lr"] > 2.0 or t.state.name == "COMPLETE" for t in result.trials)
    assert _diverged_share(result.trials) <= 0.10

    client = MlflowClient(stores["tracking_uri"])
    exp = client.get_experiment_by_name("diverging")
    runs = {int(r.data.tags["autolr.trial"]): r for r in client.search_runs([exp.experiment_id]) if "autolr.trial" in r.data.tags}
    for t in diverged:
        tags = runs[t.number].data.tags
        assert tags["autolr.state"] == "PRUNED"
        assert tags["autolr.prune_reason"] == t.user_attrs["autolr.prune_reason"]
        assert tags["autolr.divergence_step"] == str(t.user_attrs["autolr.divergence_step"])


def test_mostly_divergent_minibatch_study(write_study, stores) -> None:
    path = write_study("""
        name: digits-diverging
        task: digits_mlp
        task_args: {hidden: 32}
        train: {epochs: 3, batch_size: 64}
        trials: 16
        search: {lr: {low: 0.01, high: 1000.0}, optimizer: {sgd: {momentum: 0.9}}, schedule: [constant]}
        pruning: {divergence: true, curve: median}
    """)  # stable below about 0.3: three quarters of the log range diverge
    result = autolr.tune(path, storage=stores["storage"], tracking_uri=None)
    diverged = [t for t in result.trials if t.user_attrs.get("autolr.diverged")]
    assert len(diverged) >= 1 and all(t.params["lr"] > 0.1 for t in diverged)
    assert _diverged_share(result.trials) <= 0.10


def test_ceiling_band_rules() -> None:
    from autolr.sampler import risky_band

    assert risky_band(5.0, None, None) is None  # nothing diverged: keep
    assert risky_band(1.0, None, 4.0) is None  # far below the only divergence: keep
    assert risky_band(2.0, None, 4.0) == pytest.approx((4.0 / 30, 4.0 / 3))  # close to it, nothing stable
    low, high = risky_band(9.0, 1.0, 4.0)  # above the ceiling: just below the stable rate, up to halfway
    assert (low, high) == pytest.approx((0.5, 2.0))
    assert risky_band(3.0, 1.0, 4.0) == pytest.approx((1.0, 2.0))  # upper half of a wide unexplored gap
    assert risky_band(1.9, 1.8, 2.0) is None  # narrow gap: the edge is TPE's to explore


def test_ceiling_ignores_a_lucky_survivor_above_divergent_rates() -> None:
    from optuna.trial import create_trial

    from autolr.sampler import lr_ceiling

    def trial(lr, diverged):
        return create_trial(state=optuna.trial.TrialState.PRUNED if diverged else optuna.trial.TrialState.COMPLETE,
                            value=None if diverged else 1.0, params={"lr": lr},
                            distributions={"lr": optuna.distributions.FloatDistribution(1e-3, 10, log=True)},
                            user_attrs={"autolr.diverged": diverged})  # fmt: skip

    trials = [trial(0.1, False), trial(0.3, True), trial(0.35, False), trial(0.4, True), trial(0.5, True), trial(3.0, True)]
    assert lr_ceiling(trials, None) == (0.35, 0.3)  # 0.35 survived once, but most runs from 0.3 up diverged
    assert lr_ceiling(trials[:2], None) == (0.1, 0.3)
    assert lr_ceiling([trial(0.1, False)], None) == (0.1, None)


def test_one_stability_rule_for_the_sampler_and_the_report() -> None:
    """A trial whose training loss ended above its start is not stable, for the ceiling and the plot alike."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from autolr.plots import max_stable_lr
    from autolr.sampler import lr_ceiling
    from autolr.store import trial_row

    dist = {"lr": FloatDistribution(1e-4, 10, log=True)}
    trials = [
        create_trial(params={"lr": 0.1}, distributions=dist, value=0.5, state=TrialState.COMPLETE, user_attrs={"autolr.loss_ratio": 0.2}),
        create_trial(params={"lr": 0.5}, distributions=dist, value=2.9, state=TrialState.COMPLETE, user_attrs={"autolr.loss_ratio": 1.3}),
    ]
    assert lr_ceiling(trials, None)[0] == 0.1
    assert max_stable_lr([trial_row(t) for t in trials]) == 0.1
