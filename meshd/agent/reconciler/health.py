"""Health of this droplet's instances: starting instances are probed often (they count as
healthy on their first good probe), running ones every `HEALTH_EVERY_S`; `UNHEALTHY_AFTER`
failed probes in a row make one unhealthy, and the reconciler restarts it (plain Docker never
restarts a running-but-unhealthy container). The built-in datastores are probed by their own
protocol (`probes`); workers and other datastores without a health path are healthy while they
run."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

import aiohttp

from meshd.agent.metrics import PROBE_SECONDS
from meshd.agent.reconciler.instances import NotReady
from meshd.agent.reconciler.probes import DatastoreProbes
from meshd.agent.reconciler.tracked import BACKOFF_MAX_S, START_GRACE_S, Tracked, service_slot
from meshd.core.rollout import slot_port
from plugins.runtimes import InstanceInfo, RuntimeFailure, RuntimeUnavailable
from protocol.messages import Allocation, InstanceState

log = logging.getLogger(__name__)
HEALTH_EVERY_S = 5.0  # instances that run and passed before (3 misses: 15 s)
HEALTH_STARTING_EVERY_S = 0.25  # instances waiting for their first good probe
HEALTH_TIMEOUT_S = 1.0
UNHEALTHY_AFTER = 3  # consecutive failed probes
# A failed probe counts at most once per full period: a slow start (a busy engine) gets as
# long as a running instance before it is judged.
COUNTED_EVERY_S = HEALTH_EVERY_S - HEALTH_STARTING_EVERY_S
PROBED = (InstanceState.STARTING, InstanceState.RUNNING, InstanceState.UNHEALTHY)


class HealthProber:
    def __init__(
        self,
        address: str,
        tracked: dict[str, Tracked],
        allocations: Callable[[], Mapping[str, Allocation]],
        changed: Callable[[], None],
        restart: Callable[[str], Awaitable[InstanceInfo | None]],
        datastores: DatastoreProbes | None = None,
    ) -> None:
        self.address = address
        self.tracked = tracked  # shared with the reconciler, which owns it
        self.allocations = allocations
        self.changed = changed  # what is reported, or may be done, changed
        self.restart = restart  # restarts an instance: its new info (None: not wanted now)
        self.datastores = datastores
        self._woken = asyncio.Event()

    def wake(self) -> None:
        """An instance started: probe it soon (it counts as healthy from its first good probe)."""
        self._woken.set()

    async def run(self, http: aiohttp.ClientSession) -> None:
        last_full = 0.0
        while True:
            # While nothing starts, the next full round is all there is to do: sleep till then.
            starting = any(t.state is InstanceState.STARTING for t in self.tracked.values())
            due = last_full + HEALTH_EVERY_S - time.monotonic()
            wait = HEALTH_STARTING_EVERY_S if starting else max(HEALTH_STARTING_EVERY_S, due)
            self._woken.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), wait)
            if self._woken.is_set():
                await asyncio.sleep(HEALTH_STARTING_EVERY_S)  # give it a moment to listen
            now = time.monotonic()
            full = now - last_full >= HEALTH_EVERY_S
            if full:
                last_full = now
            allocations = self.allocations()
            keys = [
                k
                for k, t in self.tracked.items()
                if service_slot(k)[0] in allocations
                and t.state in PROBED
                and not t.waiting
                and (full or t.state is InstanceState.STARTING)
            ]
            results = await asyncio.gather(*(self._probe(http, k, allocations) for k in keys))
            for key, ok in zip(keys, results, strict=True):
                await self._judge(key, ok)

    async def _probe(
        self, http: aiohttp.ClientSession, key: str, allocations: Mapping[str, Allocation]
    ) -> bool:
        service, slot = service_slot(key)
        allocation = allocations.get(service)
        if allocation is None:
            return False
        port = slot_port(allocation, slot)
        started = time.monotonic()
        if port is not None and self.datastores and self.datastores.kind(allocation):
            ok = await self.datastores.probe(allocation, self.address, port, HEALTH_TIMEOUT_S)
            PROBE_SECONDS.labels("datastore").observe(time.monotonic() - started)
            return ok
        if port is None or not allocation.health_path:
            return True  # workers and datastores without a health path: alive is healthy
        url = f"http://{self.address}:{port}{allocation.health_path}"
        try:
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_S)) as r:
                return 200 <= r.status < 400
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False
        finally:
            PROBE_SECONDS.labels("http").observe(time.monotonic() - started)

    async def _judge(self, key: str, ok: bool) -> None:
        tracked = self.tracked.get(key)
        allocation = self.allocations().get(service_slot(key)[0])
        if tracked is None or allocation is None or tracked.state is InstanceState.CRASHED:
            return
        now = time.monotonic()
        if ok:
            if not tracked.healthy:
                self.changed()  # reported healthy now; an old instance beside it may drain
            tracked.failed_probes = 0
            tracked.healthy = True
            tracked.state = InstanceState.RUNNING
            # A restart long ago that has healed is forgotten; an error still shown is not.
            healed = now - tracked.started > BACKOFF_MAX_S and tracked.last_error is None
            if healed:
                tracked.restarts = 0
            return
        if (
            now - tracked.started < START_GRACE_S
            or now - tracked.last_failed_probe < COUNTED_EVERY_S
        ):
            return
        tracked.last_failed_probe = now
        tracked.failed_probes += 1
        tracked.healthy = False
        if tracked.failed_probes < UNHEALTHY_AFTER:
            return
        tracked.state = InstanceState.UNHEALTHY
        tracked.last_error = f"health check failed {tracked.failed_probes} times in a row"
        if now < tracked.next_attempt or tracked.generation != allocation.generation:
            return  # an old generation is never restarted: its replacement is on the way
        log.warning("Restarting unhealthy instance. instance=%s", key)
        tracked.restarts += 1
        tracked.back_off(now)
        try:
            info = await self.restart(key)
        except (RuntimeFailure, RuntimeUnavailable, LookupError, NotReady) as err:
            tracked.last_error = str(err)
            return
        if info is not None:
            tracked.started_as(info, tracked.generation)
