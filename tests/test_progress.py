"""The progress bar: trials finished, and the running trial's epoch, step and loss, throttled."""

from __future__ import annotations

import io

import pytest

from autolr import progress
from autolr.progress import NullProgress, Progress


def _bar(monkeypatch) -> tuple[Progress, io.StringIO]:
    out = io.StringIO()
    monkeypatch.setattr(progress.sys, "stderr", out)
    return Progress(5, initial=2), out


def test_the_running_trial_shows_its_epoch_step_and_loss(monkeypatch) -> None:
    bar, out = _bar(monkeypatch)
    bar.steps("#7", 130, 440, 3, 20, 0.2311)
    bar.bar.refresh()
    assert "#7 epoch 3/20, step 130/440, loss 0.2311" in out.getvalue()
    assert "2/5" in out.getvalue()  # a resumed study starts where it stands
    bar.trial_finished("#7 COMPLETE 0.1", counted=True)
    bar.bar.refresh()
    assert "3/5" in out.getvalue() and "#7 COMPLETE 0.1" in out.getvalue()
    bar.close()


def test_redraws_are_throttled(monkeypatch) -> None:
    bar, _ = _bar(monkeypatch)
    clock = iter([100.0, 100.1, 100.2, 100.7])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    shown = []
    monkeypatch.setattr(bar.bar, "set_postfix_str", lambda text, **_: shown.append(text))
    for step in (1, 2, 3, 4):
        bar.steps("#0", step, 10, 1, 2, 1.0)
    assert [s.split("step ")[1].split("/")[0] for s in shown] == ["1", "4"]  # every REFRESH_S at most
    assert progress.REFRESH_S == pytest.approx(0.5)


def test_no_bar_does_nothing() -> None:
    null = NullProgress()
    null.steps("#0", 1, None, 1, None, None)
    null.trial_finished("x", counted=True)
    null.note("x")
    null.close()


def test_a_confirmation_run_is_named_by_the_search_trial_it_confirms() -> None:
    """Its own number counts the confirmation study's runs: '#0' there was not search trial 0."""
    from types import SimpleNamespace

    from autolr import keys
    from autolr.trial import TrialReport

    def label(attrs: dict) -> str:
        return TrialReport(SimpleNamespace(number=3, user_attrs=attrs), None, "val_loss", False)._label()

    assert label({}) == "#3"
    assert label({keys.CONFIRM_OF: 4, keys.SEED: 1000}) == "confirming #4 on seed 1000"
    assert label({keys.CONFIRM_OF: 4, keys.SEED: 1000, keys.LR_SCALE: 0.49}) == "confirming #4 at 0.49x its lr on seed 1000"
