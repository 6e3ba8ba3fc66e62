"""Fault drills on local droplets (`meshctl chaos`): a droplet dies as a machine does (SIGKILL
of its processes, its containers killed), freezes (SIGSTOP) and thaws, is cut off the network
or off some peers, or loses packets. Cutting off needs network-namespace droplets: loopback
droplets' nats-server routes leave from 127.0.0.1, which no rule can tell apart."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Sequence

from plugins.providers import PowerHook, ProviderError
from plugins.providers.local import netns
from plugins.providers.local.account import AccountStore, DropletState
from plugins.providers.local.machine import Machines


class LocalDrills:
    def __init__(
        self,
        store: AccountStore,
        machines: Machines,
        on_power: PowerHook,
        use_netns: bool,
        log: logging.Logger,
    ) -> None:
        self._store = store
        self._machines = machines
        self._on_power = on_power
        self._netns = use_netns
        self._log = log

    async def crash(self, droplet_id: str) -> None:
        state = await asyncio.to_thread(self._store.state, droplet_id, "crash")
        await asyncio.to_thread(self._machines.kill, f"crash droplet {droplet_id}", state)
        await asyncio.to_thread(self._power, state, "kill")
        self._log.info("Droplet crashed (drill). id=%s", droplet_id)

    async def pause(self, droplet_id: str, *, resume: bool = False) -> None:
        state = await asyncio.to_thread(
            self._store.state, droplet_id, "resume" if resume else "pause"
        )
        if state.pgid is None or not await asyncio.to_thread(state.running):
            raise ProviderError(f"pause droplet {droplet_id}", "it is not running")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(state.pgid, signal.SIGCONT if resume else signal.SIGSTOP)
        await asyncio.to_thread(self._power, state, "unpause" if resume else "pause")
        self._log.info("Droplet %s (drill). id=%s", "resumed" if resume else "paused", droplet_id)

    async def partition(self, droplet_id: str, peers: Sequence[str] = ()) -> None:
        await self._cut(
            droplet_id, "partition", lambda layout: netns.partition(layout, droplet_id, peers)
        )
        self._log.info("Droplet cut off (drill). id=%s peers=%s", droplet_id, list(peers) or "all")

    async def lose(self, droplet_id: str, probability: float) -> None:
        await self._cut(
            droplet_id,
            "lose packets of",
            lambda layout: netns.lose(layout, droplet_id, probability),
        )

    async def heal(self, droplet_id: str) -> None:
        await self._cut(droplet_id, "heal", lambda layout: netns.heal(layout, droplet_id))
        self._log.info("Droplet reconnected (drill). id=%s", droplet_id)

    async def _cut(self, droplet_id: str, what: str, act: Callable[[netns.Layout], None]) -> None:
        action = f"{what} droplet {droplet_id}"
        if not self._netns:
            raise ProviderError(
                action,
                "loopback droplets cannot be cut off (their nats-server routes leave from "
                "127.0.0.1); start the mesh with network namespaces: "
                "meshctl up --netns (as root)",
            )
        state = await asyncio.to_thread(self._store.state, droplet_id, what)
        block = state.address.rsplit(".", 1)[0]
        try:
            await asyncio.to_thread(act, netns.Layout(block))
        except netns.NetnsError as err:
            raise ProviderError(action, str(err)) from err

    def _power(self, state: DropletState, event: str) -> None:
        if self._on_power is not None:
            self._on_power(state.name, state.user_data(), event)
