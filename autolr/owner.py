"""Which process runs a trial, and whether it is still alive.

A running trial records its owner: the machine (host name, boot id, PID namespace), the process id and
the process's start time. A process on the same machine then knows at once whether the owner is gone
(killed, crashed, requeued by a batch scheduler) instead of waiting for its heartbeat to go stale; a
process reused under the same id since is told apart by its start time. Owners on other machines are
judged by the storage heartbeat only. Stdlib only; Linux reads ``/proc``, elsewhere the PID alone.
"""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path
from typing import Any

__all__ = ["is_dead", "on_this_machine", "this_process"]


@functools.cache
def _machine() -> str:
    """This machine as a process id's namespace: a PID means the same process only within it."""
    parts = [socket.gethostname()]
    for path in ("/proc/sys/kernel/random/boot_id",):
        try:
            parts.append(Path(path).read_text().strip())
        except OSError:
            pass
    try:
        parts.append(os.readlink("/proc/self/ns/pid"))
    except OSError:
        pass
    return "/".join(parts)


def _stat(pid: int) -> list[str] | None:
    """``/proc/PID/stat`` from field 3 (the state) on, or None (no such process, or no ``/proc``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22), or None."""
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def this_process() -> dict[str, Any]:
    """The owner record of the calling process."""
    pid = os.getpid()
    return {"machine": _machine(), "pid": pid, "start": _start_ticks(pid)}


def on_this_machine(owner: Any) -> bool:
    """Whether ``owner`` is a process record of this machine (then its PID tells, not its heartbeat)."""
    return isinstance(owner, dict) and owner.get("machine") == _machine() and isinstance(owner.get("pid"), int)


def is_dead(owner: Any) -> bool:
    """Whether ``owner`` (a :func:`this_process` record) is a process of this machine that is gone.
    False for another machine's process, or a record that is not one: those are the heartbeat's."""
    if not on_this_machine(owner):
        return False
    pid = owner["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        pass
    fields = _stat(pid)
    if fields is None:
        return False
    if fields[0] in ("Z", "X"):  # killed, not yet reaped by its parent
        return True
    return owner.get("start") is not None and int(fields[19]) != owner["start"]
