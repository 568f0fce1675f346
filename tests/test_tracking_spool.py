"""The spool: what a writer could not write survives it; what a later autolr cannot read is kept, never deleted."""

from __future__ import annotations

import logging
import pickle

import pytest

from autolr.tracking._messages import CreateRun, RunBatch, RunEnd
from autolr.tracking._spool import SPOOL_VERSION, Spool, to_record

URI = "http://example:5000"
BATCH = RunBatch(
    None,
    new_run=CreateRun(0, "1", "trial-0", {"autolr.trial": "0"}, {"lr": "0.1"}, 1_700_000_000_000),
    points=[("train_loss", 1.0, 1_700_000_000_001, 0), ("train_loss", float("inf"), 1_700_000_000_002, 1)],
    tags={"autolr.state": "FAIL"},
    end=RunEnd("KILLED", 1_700_000_000_003),
)
OLD_ENTRY = {"run_id": "r1", "new_run": None, "points": [("train_loss", 1.0, 0, 0)], "tags": {}, "end": None}  # version 1


@pytest.fixture
def spool(tmp_path, monkeypatch) -> Spool:
    monkeypatch.setenv("AUTOLR_SPOOL_DIR", str(tmp_path))
    return Spool(URI)


def _write(spool: Spool, name: str, payload) -> None:
    spool.folder.mkdir(parents=True, exist_ok=True)
    (spool.folder / name).write_bytes(payload if isinstance(payload, bytes) else pickle.dumps(payload))


def test_a_saved_batch_comes_back_as_it_was(spool) -> None:
    path = spool.save({0: BATCH})
    assert pickle.loads(path.read_bytes())[0]["version"] == SPOOL_VERSION
    ((key, batch),) = Spool(URI).load()
    assert batch == BATCH and key[0] == "spool"


def test_an_older_version_entry_is_kept_and_reported_once(spool, caplog) -> None:
    _write(spool, "20240101-000000-1.pkl", [OLD_ENTRY])
    with caplog.at_level(logging.WARNING):
        assert spool.load() == []
        assert Spool(URI).load() == []
    (kept,) = spool.folder.iterdir()
    assert kept.suffix == ".kept" and pickle.loads(kept.read_bytes()) == [OLD_ENTRY]
    (line,) = [r.getMessage() for r in caplog.records]
    assert str(kept) in line and "spool format version 1" in line and "\n" not in line


def test_an_unreadable_file_is_kept_and_reported(spool, caplog) -> None:
    _write(spool, "20240101-000000-2.pkl", b"\x80\x05truncated")
    with caplog.at_level(logging.WARNING):
        assert spool.load() == []
    (kept,) = spool.folder.iterdir()
    assert kept.read_bytes() == b"\x80\x05truncated" and "unreadable" in caplog.text


def test_a_mixed_file_writes_what_it_can_and_keeps_the_rest(spool) -> None:
    _write(spool, "20240101-000000-3.pkl", [OLD_ENTRY, to_record(BATCH)])
    ((key, batch),) = spool.load()
    assert batch == BATCH
    spool.done(key)  # written: its file goes, the entry it could not read stays
    (kept,) = spool.folder.iterdir()
    assert kept.suffix == ".kept" and pickle.loads(kept.read_bytes()) == [OLD_ENTRY]


def test_a_kept_file_is_never_overwritten(spool) -> None:
    for name in ("20240101-000000-4.pkl", "20240101-000000-4.pkl.999999999.claimed"):
        _write(spool, name, [OLD_ENTRY])
    spool.load()
    assert sorted(p.suffix for p in spool.folder.iterdir()) == [".kept", ".kept"]


def test_a_version_2_entry_is_still_read(spool) -> None:
    """Version 3 added two fields to a new run's creation; a file of the version before reads as it was."""
    record = to_record(BATCH)
    for field in ("run_uuid", "resumed"):
        del record["new_run"][field]
    _write(spool, "20240101-000000-5.pkl", [{**record, "version": 2}])
    ((_, batch),) = spool.load()
    assert batch == BATCH
