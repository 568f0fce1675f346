"""The curve pruner waits out each trial's warmup (``autolr.pruning.WarmupGracePruner``)."""

from __future__ import annotations

import optuna
import pytest

from autolr import keys
from autolr.pruning import CompletedSnapshot, WarmupGracePruner


class Always(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return True


def _pruned_at(warmup: float, epochs: int = 10) -> int | None:
    study = optuna.create_study(pruner=WarmupGracePruner(Always(), epochs=epochs))
    trial = study.ask()
    trial.set_user_attr(keys.PARAMS, {"lr": 0.1, "warmup": warmup})
    for epoch in range(1, epochs + 1):
        trial.report(1.0, epoch)
        if trial.should_prune():
            return epoch
    return None


def test_no_warmup_is_judged_from_the_first_epoch() -> None:
    assert _pruned_at(0.0) == 1


def test_a_warmup_is_never_judged_before_its_epochs_are_over() -> None:
    assert _pruned_at(0.3) == 3
    assert _pruned_at(0.25) == 3  # 2.5 epochs of warmup: judged once the third is done


def test_epochs_must_be_positive() -> None:
    with pytest.raises(ValueError, match="epochs: expected an integer >= 1, got 0"):
        WarmupGracePruner(Always(), epochs=0)


def _median_decisions(pruner: optuna.pruners.BasePruner, storage) -> list[tuple[int, int | None]]:
    """(trial, epoch it was pruned at) over a study of made-up curves, some better, some worse."""
    study = optuna.create_study(storage=storage, pruner=pruner)
    decisions = []
    for number in range(14):
        trial = study.ask()
        pruned_at = None
        for epoch in range(1, 9):
            trial.report(1.0 / epoch + 0.05 * ((number * 7) % 5) - 0.01 * epoch * (number % 3), epoch)
            if trial.should_prune():
                pruned_at = epoch
                break
        study.tell(trial, state=optuna.trial.TrialState.PRUNED) if pruned_at else study.tell(trial, 1.0 / 8)
        decisions.append((number, pruned_at))
    return decisions


def test_the_completed_snapshot_prunes_exactly_as_optunas_median_pruner(tmp_path) -> None:
    def median():
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)

    plain = _median_decisions(median(), f"sqlite:///{tmp_path}/plain.db")
    snapshot = _median_decisions(CompletedSnapshot(median()), f"sqlite:///{tmp_path}/snapshot.db")
    assert snapshot == plain
    assert any(at is not None for _, at in plain) and any(at is None for _, at in plain[3:])  # both kinds happened


def test_the_completed_snapshot_reads_the_complete_trials_once_per_trial() -> None:
    reads = []

    class Counting(optuna.storages.InMemoryStorage):
        def get_all_trials(self, study_id, deepcopy=True, states=None):
            if states is None or tuple(states) == (optuna.trial.TrialState.COMPLETE,):  # not ask's look for WAITING trials
                reads.append(1)
            return super().get_all_trials(study_id, deepcopy=deepcopy, states=states)

    _median_decisions(CompletedSnapshot(optuna.pruners.MedianPruner(n_startup_trials=3)), Counting())
    assert len(reads) == 14  # once per trial, not once per epoch (Optuna's own: up to 8 a trial)


def test_judging_reads_nothing_once_the_sampler_read_the_trials() -> None:
    """The snapshot is the list the sampler drew the trial's configuration from (TPE reads it once per
    trial): judging every epoch adds no read of the storage, and the decisions are still the median's."""
    reads = []

    class Counting(optuna.storages.InMemoryStorage):
        def get_all_trials(self, study_id, deepcopy=True, states=None):
            reads.append(states)
            return super().get_all_trials(study_id, deepcopy=deepcopy, states=states)

    pruner = CompletedSnapshot(optuna.pruners.MedianPruner(n_startup_trials=2))
    study = optuna.create_study(storage=Counting(), sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=3), pruner=pruner)
    pruned = 0
    for number in range(8):
        trial = study.ask()
        x = trial.suggest_float("x", 0.0, 1.0)
        before = len(reads)
        for epoch in range(1, 5):
            trial.report(x + 1.0 / epoch, epoch)
            if trial.should_prune():
                break
        assert len(reads) == before, f"trial {number}: judging read the storage"
        if trial.should_prune():
            pruned += 1
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, x)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert pruned > 0 and len(complete) >= 2  # the median judged, and it cut some


def test_a_trial_judged_in_another_thread_is_judged_against_the_trials_before_it() -> None:
    """Optuna's per-trial list lives in the thread that asked the trial: a loop that reports from a
    worker thread of its own gets the study read for each trial, not that thread's first list."""
    from concurrent.futures import ThreadPoolExecutor

    def pruned_count(pool) -> int:
        study = optuna.create_study(pruner=CompletedSnapshot(optuna.pruners.MedianPruner(n_startup_trials=2)))
        pruned = 0
        for number in range(12):
            trial = study.ask()

            def judge(trial=trial, number=number) -> bool:
                for epoch in range(1, 5):
                    trial.report(number + 1.0 / epoch, epoch)  # each trial worse than the last: the median cuts it
                    if trial.should_prune():
                        return True
                return False

            cut = pool.submit(judge).result() if pool is not None else judge()
            pruned += cut
            study.tell(trial, state=optuna.trial.TrialState.PRUNED) if cut else study.tell(trial, float(number))
        return pruned

    with ThreadPoolExecutor(1) as pool:
        assert pruned_count(pool) == pruned_count(None) == 10


def test_curve_pruning_waits_a_fifth_of_the_epochs_by_default() -> None:
    """Early in training a high rate leads every curve; a median judged after one epoch of 15 cut the
    slow starters where the best rates were (bench/efficiency.py, digits wide)."""
    from autolr.config import PruningConfig, parse_study
    from autolr.errors import StudyFileError
    from autolr.pruning import make_pruner

    assert [PruningConfig().first_epoch(e) for e in (1, 5, 6, 10, 15, 20)] == [1, 1, 2, 2, 3, 4]
    assert PruningConfig(warmup_epochs=1).first_epoch(20) == 1 and PruningConfig(warmup_epochs=0).first_epoch(20) == 0

    def study(pruning: dict | None = None, epochs: int = 20):
        doc = {"name": "p", "task": "least_squares", "train": {"epochs": epochs}, "search": {"lr": {"low": 1e-3, "high": 1.0}}}
        return parse_study(doc if pruning is None else {**doc, "pruning": pruning})

    assert study().pruning.warmup_epochs is None and study({"warmup_epochs": "auto"}).pruning.warmup_epochs is None
    assert study({"warmup_epochs": 2}).pruning.warmup_epochs == 2
    with pytest.raises(StudyFileError, match=r"pruning.warmup_epochs: expected an integer >= 0 or auto, got 'soon'"):
        study({"warmup_epochs": "soon"})
    median = make_pruner(study(epochs=15)).pruner.pruner  # WarmupGracePruner(CompletedSnapshot(MedianPruner))
    assert median._n_warmup_steps == 3
    assert make_pruner(study({"curve": "hyperband"}, epochs=15))._min_resource == 3
