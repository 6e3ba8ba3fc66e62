"""How the process runtime stops an instance: its stop signal, then SIGKILL after a grace
period, through its own `Popen` when it has one, else by pid (an instance it re-adopted)."""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess

from plugins.procfs import is_alive
from plugins.runtimes import InstanceStopError
from plugins.runtimes.process.records import ProcessRecord, signal_adopted

KILL_TIMEOUT = 5.0
POLL_INTERVAL = 0.05


async def terminate(
    state: ProcessRecord,
    child: subprocess.Popen[bytes] | None,
    grace: float,
    log: logging.Logger,
) -> None:
    """SIGTERM, then SIGKILL after `grace`; raise InstanceStopError if it still lives."""
    _signal(state, child, signal.Signals(state.stop_signal))
    if await _wait_exit(state, child, grace):
        return
    log.warning(
        "Instance ignored %s, killing it. key=%s pid=%d grace=%.1f",
        signal.Signals(state.stop_signal).name,
        state.key,
        state.pid,
        grace,
    )
    _signal(state, child, signal.SIGKILL)
    if not await _wait_exit(state, child, KILL_TIMEOUT):
        raise InstanceStopError(
            state.key, f"pid {state.pid} still runs {KILL_TIMEOUT:.0f}s after SIGKILL"
        )


def _signal(
    state: ProcessRecord, child: subprocess.Popen[bytes] | None, sig: signal.Signals
) -> None:
    if child is not None:
        child.send_signal(sig)  # does nothing once the child has been reaped
    else:
        signal_adopted(state, sig)


async def _wait_exit(
    state: ProcessRecord, child: subprocess.Popen[bytes] | None, within: float
) -> bool:
    """Wait up to `within` seconds for the instance to exit; True if it did."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        if child is not None:
            exited = child.poll() is not None
        else:
            exited = not is_alive(state.pid, state.start_ticks)
        if exited:
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(POLL_INTERVAL)
