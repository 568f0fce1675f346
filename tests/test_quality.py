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
    # one that got to a tenth of its start and gave most of it back (at chance again), one whose end is noise on its plateau
    ratios = {
        0.3: {"autolr.loss_ratio": 0.95, "autolr.low_loss_ratio": 0.1, "autolr.last_loss_ratio": 0.9},
        0.2: {"autolr.loss_ratio": 0.15, "autolr.low_loss_ratio": 0.1, "autolr.last_loss_ratio": 0.12},
    }
    trials += [create_trial(params={"lr": lr}, distributions=dist, value=1.0, state=TrialState.COMPLETE, user_attrs=attrs) for lr, attrs in ratios.items()]
    assert lr_ceiling(trials, None)[0] == 0.2
    assert max_stable_lr([trial_row(t) for t in trials]) == 0.2


def test_noise_on_a_run_of_modest_progress_is_not_read_as_giving_it_back() -> None:
    """A run that falls to 0.75x its start with 30% noise on every step (small batches) is never read
    as giving its progress back, on 50 noise draws each at 8 epochs of 100 steps, 20 of 8, 200 of 4 (a
    loop that validates every few steps; the lowest of many noisy means lies far below the trend) and
    2 of 3 (a wine-sized study, where a first version read every trial unstable): where the rule
    before reads it stable, so does the rule now. A schedule that restarts (SGDR) gives some progress back for a
    while and is stable; a run learning to 0.2x and sitting near its start from its fifth epoch is
    not, at 100 steps an epoch and at 10."""
    import numpy as np

    from autolr.stability import is_stable, ratios
    from autolr.tracking import NullTrialRun
    from autolr.trial import TrialReport

    class Attrs:
        number, user_attrs = 0, {}

        def __init__(self) -> None:
            self.attrs: dict = {}

        def set_user_attr(self, key, value) -> None:
            self.attrs[key] = value

        def report(self, value, step) -> None: ...

    def readings(losses: np.ndarray, epochs: int | list[int] = 8) -> tuple[bool, bool]:
        """(stable by the rule before, stable now) of a run with these training losses, in ``epochs``
        equal epochs or epochs of these lengths."""
        trial = Attrs()
        report = TrialReport(trial, NullTrialRun(), "val_loss", curve_pruning=False)
        step = 0
        chunks = np.array_split(losses, epochs) if isinstance(epochs, int) else np.split(losses, np.cumsum(epochs)[:-1])
        for epoch, chunk in enumerate(chunks, start=1):
            for first in range(0, len(chunk), 4):  # in windows of 4 steps, as the trainer hands them over
                report.on_steps(step, {"train_loss": [float(v) for v in chunk[first : first + 4]]})
                step += len(chunk[first : first + 4])
            report.on_epoch_end(epoch, step, {"val_loss": 1.0})
        report.record_loss_ratio()
        end = trial.attrs["autolr.loss_ratio"]
        return is_stable("COMPLETE", diverged=False, loss_ratio=end), is_stable("COMPLETE", diverged=False, **ratios(trial.attrs))

    rng = np.random.default_rng(0)
    for epochs, per_epoch in ((8, 100), (20, 8), (200, 4), (2, 3)):
        steps = np.arange(epochs * per_epoch)
        modest = [readings((0.75 + 0.25 * np.exp(-steps / len(steps) * 4)) * (1 + 0.3 * rng.standard_normal(len(steps))), epochs) for _ in range(50)]
        assert all(now == before for before, now in modest), (epochs, per_epoch)
        assert sum(before for before, _ in modest) >= (40 if per_epoch > 3 else 15)  # 6 steps' noise: the first clause reads about half unstable
    steps = np.arange(800)
    restarts = 0.3 + 0.7 * np.exp(-steps / 100) + 0.3 * (1 + np.cos(np.pi * (steps % 200) / 200)) / 2 * (steps >= 200)  # back up at each cycle's start
    assert readings(restarts * (1 + 0.1 * rng.standard_normal(800))) == (True, True)
    for per_epoch, noise in ((100, 0.2), (10, 0.1)):
        steps = np.arange(8 * per_epoch)
        learnt_then_lost = np.where(steps < 4 * per_epoch, 0.2 + 0.8 * np.exp(-steps / per_epoch), 0.8)  # ends below its first steps' mean
        assert readings(learnt_then_lost * (1 + noise * rng.standard_normal(len(steps)))) == (True, False), per_epoch
    # a last epoch too short to read (max_steps stopping mid-epoch, an evaluation with no steps): the epoch before it is read
    lost = np.concatenate([learnt_then_lost, np.full(2, 0.8)]) * (1 + 0.1 * rng.standard_normal(len(steps) + 2))
    assert readings(lost, [per_epoch] * 8 + [2]) == (True, False)


def test_epoch_losses_beyond_a_floats_range_are_not_read_and_raise_nothing() -> None:
    """A block with a loss of 1e160 (its square overflows) or sums past a float's range (the guard
    off, float64 losses) is not read as a low point or an end; the blocks around it are."""
    from autolr.stability import EpochLosses

    losses = EpochLosses()
    for block in ([1.0] * 16, [1.0] * 15 + [1e160], [1e308, -1e308] * 8):
        losses.add(block)
        losses.end_epoch()
    assert losses.low == pytest.approx(1.0) and losses.last == float("-inf")  # the 1e160 block: its noise unbounded
    losses.add([0.5] * 16)
    losses.end_epoch()
    assert losses.low == pytest.approx(0.5) and losses.last == pytest.approx(0.5)
