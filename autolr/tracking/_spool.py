"""What a writer could not write before it stopped, kept on disk for the next writer of the same store.

One pickle file per writer that stopped with something held, in a folder per tracking store
(``AUTOLR_SPOOL_DIR``, default ``~/.cache/autolr/unsent``). Each entry is a plain dict (no autolr class
is pickled, so moving code never makes a file unreadable) carrying ``version``: the format it was
written in. The next writer claims a file first (renames it ``<name>.pkl.<pid>.claimed``, so of two
writers starting together one gets it; a dead claimant's files are claimed again) and removes it once
all of it is written. What it cannot read (a truncated file, an entry of another format version) is
never deleted: it is moved aside to ``<name>.kept`` and reported with one warning line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import pickle
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from autolr import sqlite
from autolr.tracking._messages import CreateRun, RunBatch, RunEnd

__all__ = ["SPOOL_VERSION", "Spool", "pid_alive"]

logger = logging.getLogger(__name__)

# 1: the dicts of the single-module autolr/tracking.py, no "version" key. 2: RunBatch fields + version.
# 3: a new run's creation also carries run_uuid and resumed (version 2 entries read as they are).
SPOOL_VERSION = 3
READABLE_VERSIONS = (2, 3)


def pid_alive(pid: int) -> bool:
    """Whether a process of this host is alive (unknown or someone else's: assumed so)."""
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def to_record(batch: RunBatch) -> dict[str, Any]:
    return {"version": SPOOL_VERSION, **dataclasses.asdict(batch)}


def from_record(record: Any) -> RunBatch | None:
    """The batch of a spool entry, or None when it is not of a format version this autolr reads."""
    if not isinstance(record, dict) or record.get("version") not in READABLE_VERSIONS:
        return None
    new_run, end = record["new_run"], record["end"]
    return RunBatch(
        run_id=record["run_id"],
        new_run=CreateRun(**new_run) if new_run else None,
        params=dict(record["params"]),
        points=[tuple(p) for p in record["points"]],
        tags=dict(record["tags"]),
        end=RunEnd(**end) if end else None,
    )


def _spool_root() -> Path:
    root = os.environ.get("AUTOLR_SPOOL_DIR")
    if root:
        return Path(root)
    try:
        return Path.home() / ".cache" / "autolr" / "unsent"
    except RuntimeError:  # no home directory
        return Path(tempfile.gettempdir()) / "autolr-unsent"


def _store_identity(tracking_uri: str) -> str:
    """One name per store, whatever the working directory (an SQLite path resolved)."""
    path = sqlite.sqlite_path(tracking_uri)
    return tracking_uri if path is None else f"{sqlite.SQLITE_PREFIX}{path.resolve()}"


class Spool:
    """The spool folder of one tracking store (see the module docstring)."""

    def __init__(self, tracking_uri: str) -> None:
        digest = hashlib.sha1(_store_identity(tracking_uri).encode()).hexdigest()[:16]
        self.folder = _spool_root() / digest
        self.files: dict[Path, set] = {}  # claimed file -> its keys not written yet

    def pending(self) -> bool:
        return bool(self._claimable())

    def load(self) -> list[tuple[Any, RunBatch]]:
        """Claim every free file; the batches it can read, each with a key for :meth:`done`."""
        out = []
        for path in self._claimable():
            claimed = self.folder / f"{path.name.split('.')[0]}.pkl.{os.getpid()}.claimed"
            try:
                path.rename(claimed)  # atomic: of two writers, one gets it
                records = pickle.loads(claimed.read_bytes())
            except FileNotFoundError:
                continue
            except Exception as exc:  # noqa: BLE001 - a truncated file: keep it for a person to look at
                self._keep(claimed, f"unreadable ({type(exc).__name__}: {exc})")
                continue
            out += self._claim(claimed, records)
        return out

    def done(self, key: Any) -> None:
        for path, keys in list(self.files.items()):
            keys.discard(key)
            if not keys:
                path.unlink(missing_ok=True)
                del self.files[path]

    def save(self, held: Mapping[Any, RunBatch]) -> Path:
        """All of ``held`` into one new file (replacing the claimed files it includes)."""
        path = self._write(f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.pkl", [to_record(b) for b in held.values()])
        for old in self.files:
            old.unlink(missing_ok=True)
        self.files = {}
        return path

    def _claimable(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        free = list(self.folder.glob("*.pkl"))
        for path in self.folder.glob("*.claimed"):
            pid = path.suffixes[-2][1:] if len(path.suffixes) >= 2 else ""
            if not (pid.isdigit() and pid_alive(int(pid))):
                free.append(path)
        return sorted(free)

    def _claim(self, claimed: Path, records: Any) -> list[tuple[Any, RunBatch]]:
        if not isinstance(records, list):
            self._keep(claimed, f"not a list of entries but {type(records).__name__}")
            return []
        batches = [(i, from_record(r)) for i, r in enumerate(records)]
        other = [r for (_, b), r in zip(batches, records) if b is None]
        if len(other) == len(records):
            self._keep(claimed, _versions(other))
            return []
        if other:  # kept aside before anything of this file is written (and the file then deleted)
            self._keep(self._write(f"{claimed.name.split('.')[0]}-other.pkl", other, suffix=".kept"), _versions(other))
        keys = [("spool", claimed.name, i) for i, b in batches if b is not None]
        self.files[claimed] = set(keys)
        return list(zip(keys, (b for _, b in batches if b is not None)))

    def _keep(self, path: Path, why: str) -> None:
        kept = path
        if path.suffix != ".kept":
            kept = _unused(path.with_name(f"{path.name.split('.')[0]}.kept"))
            path.rename(kept)
        logger.warning("unsent MLflow points in %s not written: %s; the file is kept as it is", kept, why)

    def _write(self, name: str, records: list, *, suffix: str = "") -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / (name[: -len(".pkl")] + suffix if suffix else name)
        path = _unused(path) if suffix else path
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(pickle.dumps(records, protocol=pickle.HIGHEST_PROTOCOL))
        tmp.replace(path)
        return path


def _versions(records: list) -> str:
    versions = sorted({str(r.get("version", 1)) if isinstance(r, dict) else "?" for r in records})
    readable = ", ".join(map(str, READABLE_VERSIONS))
    return f"{len(records)} entries of spool format version {', '.join(versions)}, this autolr reads {readable}"


def _unused(path: Path) -> Path:
    """``path``, or ``name-1.kept``, ``name-2.kept``, ...: a kept file is never overwritten."""
    n = 0
    while path.with_name(f"{path.stem}-{n}{path.suffix}" if n else path.name).exists():
        n += 1
    return path.with_name(f"{path.stem}-{n}{path.suffix}" if n else path.name)
