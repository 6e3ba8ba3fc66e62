"""A local droplet's machine: powering it on runs the configured launcher with the droplet's
directory as last argument, in a session of its own, so that powering one droplet off
(SIGKILL to its whole process group) never touches another droplet or the caller. A droplet
outlives the provider object and the process that created it; while that process lives, a
thread per launcher reaps it so no zombie is left behind. A droplet counts as active while its
group has a live, non-zombie member. With network namespaces, the launcher runs inside the
droplet's namespace, cabled to the mesh's bridge (`netns`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import threading
import time
from pathlib import Path
from typing import NamedTuple

from plugins.fs import tail_text
from plugins.procfs import kill_group, proc_stat
from plugins.providers import DropletNotFound, DropletStartError, DropletStatus, ProviderError
from plugins.providers.local import netns
from plugins.providers.local.account import CONSOLE_FILE, Account, AccountStore, DropletState

log = logging.getLogger(__name__)
START_CHECK = 0.3


class Launch(NamedTuple):
    """A launcher just started, the thread that reaps it, and where its console output starts."""

    state: DropletState
    reaper: threading.Thread
    console_start: int


class Machines:
    """Powers local droplets on and off; blocking, except `check_started`."""

    def __init__(self, launcher: list[str], use_netns: bool) -> None:
        self._launcher = launcher
        self._netns = use_netns

    def spawn(self, action: str, state: DropletState) -> Launch:
        """Run the launcher for `state` in a session of its own, and a thread to reap it."""
        directory = Path(state.dir)
        argv = [*self._launcher, str(directory)]
        if self._netns:
            block = state.address.rsplit(".", 1)[0]
            argv = [*netns.Layout(block).enter(state.id), *argv]
        try:
            with (directory / CONSOLE_FILE).open("ab") as console:
                console.write(f"[local provider] power on at {time.ctime()}\n".encode())
                console.flush()
                console_start = console.tell()
                child = subprocess.Popen(
                    argv,
                    cwd=directory,
                    stdin=subprocess.DEVNULL,
                    stdout=console,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: power off kills only it
                    close_fds=True,
                )
        except OSError as err:
            raise ProviderError(action, f"cannot run {argv[0]!r}: {err.strerror or err}") from err
        stat = proc_stat(child.pid)
        state.pgid = child.pid
        state.start_ticks = stat.start_ticks if stat is not None else -1
        state.status = DropletStatus.ACTIVE
        reaper = threading.Thread(target=child.wait, name=f"reap-droplet-{state.id}", daemon=True)
        reaper.start()
        return Launch(state, reaper, console_start)

    @staticmethod
    async def check_started(action: str, launch: Launch) -> str | None:
        """Give the launcher `START_CHECK` seconds; None if it runs, else the last lines of
        its console (its whole group is gone)."""
        await asyncio.to_thread(launch.reaper.join, START_CHECK)
        if launch.reaper.is_alive() or await asyncio.to_thread(launch.state.running):
            return None
        console_file = Path(launch.state.dir) / CONSOLE_FILE
        return await asyncio.to_thread(tail_text, console_file, launch.console_start)

    async def started(self, store: AccountStore, action: str, launch: Launch) -> None:
        """If the launcher's whole group is gone within moments, record the droplet as off and
        raise DropletStartError with its console output."""
        console = await self.check_started(action, launch)
        if console is None:
            return
        state = launch.state

        def mark_off(account: Account, current: DropletState | None) -> None:
            if current is not None and current.pgid == state.pgid:
                current.status = DropletStatus.OFF

        with contextlib.suppress(DropletNotFound):
            await asyncio.to_thread(store.transact, mark_off, "start_failed", state.id, None)
        log.warning("Droplet did not start. id=%s console=%r", state.id, console)
        raise DropletStartError(action, state.id, console)

    @staticmethod
    def kill(action: str, state: DropletState) -> None:
        if state.pgid is None or state.start_ticks is None:
            return
        if not kill_group(state.pgid, state.start_ticks):
            raise ProviderError(action, f"process group {state.pgid} survived SIGKILL")

    def attach(self, account: Account, state: DropletState) -> None:
        """Cable a new machine to the mesh's network (namespaces only)."""
        if self._netns:
            try:
                netns.attach(netns.Layout(account.block), state.id, state.address)
            except netns.NetnsError as err:
                raise ProviderError(f"cable droplet {state.id}", str(err)) from err

    def detach(self, account: Account, state: DropletState) -> list[str]:
        """Unplug a machine; the problems met (a namespace not removed), if any."""
        if not self._netns:
            return []
        try:
            netns.detach(netns.Layout(account.block), state.id)
        except netns.NetnsError as err:
            return [str(err)]
        return []
