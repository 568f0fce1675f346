"""Typed messages: every message has exactly one handler on the side that receives it."""

from __future__ import annotations

import pickle
import typing

from autolr.tracking import Tracker
from autolr.tracking._messages import (
    EndRun,
    FromWriter,
    LogPoints,
    MetricsAt,
    StepSeries,
    ToWriter,
    TrialState,
)
from autolr.tracking._writer import Writer


def test_the_writer_handles_every_message_the_training_process_sends(stores, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("AUTOLR_SPOOL_DIR", str(tmp_path / "spool"))
    writer = Writer(stores["tracking_uri"], lambda msg: None)
    assert set(writer._handlers) == set(typing.get_args(ToWriter))


def test_the_tracker_handles_every_reply_of_the_writer(stores) -> None:
    tracker = Tracker(stores["tracking_uri"], experiment="replies")
    assert set(tracker._writer.on_reply_of) == set(typing.get_args(FromWriter))


def test_messages_cross_a_pipe_unchanged() -> None:
    sent = [
        LogPoints(3, [StepSeries(0, 1, {"lr": [0.1, 0.2]}), MetricsAt(1, 2, {"val_loss": float("inf")})], 3),
        EndRun(3, TrialState.KILLED, {"autolr.error": "interrupted"}, 4),
    ]
    assert [pickle.loads(pickle.dumps(m, protocol=pickle.HIGHEST_PROTOCOL)) for m in sent] == sent


def test_a_trial_state_maps_to_the_run_status_and_the_optuna_state() -> None:
    table = {s.value: (s.run_status, s.optuna_state) for s in TrialState}
    assert table == {
        "COMPLETE": ("FINISHED", "COMPLETE"),
        "PRUNED": ("FINISHED", "PRUNED"),
        "FAIL": ("FAILED", "FAIL"),
        "KILLED": ("KILLED", "FAIL"),
    }
