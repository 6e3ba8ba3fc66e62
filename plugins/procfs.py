"""Reading /proc: what the local provider and the process runtime know of a process.

A pid or process-group id is ours only if its start time matches the one recorded when we
started it: numbers are reused, start times are not.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import NamedTuple

DEAD_STATES = frozenset("ZXx")  # zombie or dead: exited, whatever still holds its number
KILL_TIMEOUT = 5.0
POLL_INTERVAL = 0.02


class ProcStat(NamedTuple):
    state: str
    pgrp: int
    start_ticks: int
    ppid: int = 0


def proc_stat(pid: int) -> ProcStat | None:
    """State letter, process group and start time (clock ticks) of `pid`, or None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    fields = raw.rpartition(")")[2].split()  # the command name may hold spaces and ')'
    try:
        # fields 3, 5, 22 and 4 of proc(5)
        return ProcStat(fields[0], int(fields[2]), int(fields[19]), int(fields[1]))
    except (IndexError, ValueError):
        return None


def is_alive(pid: int, start_ticks: int) -> bool:
    """True if `pid` is the very process that started at `start_ticks` and is not a zombie."""
    stat = proc_stat(pid)
    return stat is not None and stat.state not in DEAD_STATES and stat.start_ticks == start_ticks


def group_alive(pgid: int, start_ticks: int) -> bool:
    """True if process group `pgid` is the one we started and has a live, non-zombie member."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    leader = proc_stat(pgid)
    if leader is not None and leader.start_ticks != start_ticks:
        return False  # the number was reused; a group id is never reused while it has members
    if leader is not None and leader.state not in DEAD_STATES:
        return True
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat is not None and stat.pgrp == pgid and stat.state not in DEAD_STATES:
                return True
    return False


def kill_group(pgid: int, start_ticks: int) -> bool:
    """SIGKILL every member of the group and wait until none lives; False if some still do."""
    if group_alive(pgid, start_ticks):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + KILL_TIMEOUT
    while group_alive(pgid, start_ticks):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL)
    return True


def group_members(pgid: int) -> list[int]:
    """Live members of process group `pgid`."""
    members = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat is not None and stat.pgrp == pgid and stat.state not in DEAD_STATES:
                members.append(int(entry.name))
    return members


def command_line(pid: int) -> str:
    """The process's argv joined by spaces (as `ps` shows a retitled process), or ""."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()
