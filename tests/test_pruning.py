"""The curve pruner waits out each trial's warmup (``autolr.pruning.WarmupGracePruner``)."""

from __future__ import annotations

import optuna
import pytest

from autolr import keys
from autolr.pruning import WarmupGracePruner


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
