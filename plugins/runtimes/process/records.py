"""What the process runtime records of an instance it started (`state.json`), and how it
signals one that an earlier runtime started (its pid may have been reused since)."""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass

from plugins.procfs import is_alive
from plugins.runtimes import InstanceInfo, InstancePhase


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessRecord:
    """What `state.json` records of one started instance (never a secret)."""

    key: str
    generation: int
    pid: int
    start_ticks: int
    started_at: float
    command: str
    exit_code: int | None = None
    stop_signal: int = signal.SIGTERM  # what asks it to stop cleanly (PostgreSQL: SIGINT)

    def info(self, phase: InstancePhase, detail: str | None = None) -> InstanceInfo:
        return InstanceInfo(
            key=self.key,
            generation=self.generation,
            runtime_id=str(self.pid),
            phase=phase,
            started_at=self.started_at,
            exit_code=None if phase is InstancePhase.RUNNING else self.exit_code,
            detail=detail,
        )


def signal_adopted(state: ProcessRecord, sig: signal.Signals) -> None:
    """Send `sig` to an instance this runtime did not spawn, unless its pid was reused."""
    try:
        pidfd = os.pidfd_open(state.pid)
    except ProcessLookupError:
        return
    except OSError:  # no pidfd on this kernel: check, then signal by pid
        if is_alive(state.pid, state.start_ticks):
            with contextlib.suppress(ProcessLookupError):
                os.kill(state.pid, sig)
        return
    try:
        if is_alive(state.pid, state.start_ticks):
            signal.pidfd_send_signal(pidfd, sig)  # a pidfd cannot hit a reused pid
    except ProcessLookupError:
        pass
    finally:
        os.close(pidfd)
