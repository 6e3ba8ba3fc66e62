"""Every agent's reconciler: makes the runtime run exactly this droplet's allocations.

It starts what is missing, stops what no allocation wants, restarts crashed and unhealthy
instances (`health`) with exponential backoff, and reports what it observes. A new generation
of a web service or worker starts beside the old instance, which serves until the new one is
healthy and is then drained and stopped (`meshd.core.rollout`). The last applied allocations
are kept on local disk (`local_copy`), so instances come back after an agent restart even
while no NATS server answers; while that copy is unknown and the mesh has not answered,
nothing is stopped. An instance's artifact (a deploy's build) is fetched and loaded before it
starts (`artifacts`), and the volume it keeps its data on attached (`volumes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

import aiohttp

from meshd.agent.reconciler.artifacts import ArtifactDelivery
from meshd.agent.reconciler.health import HealthProber
from meshd.agent.reconciler.instances import NotReady, spec_for
from meshd.agent.reconciler.local_copy import LocalCopy
from meshd.agent.reconciler.probes import DatastoreProbes
from meshd.agent.reconciler.slots import current_slot, statuses, waits_for
from meshd.agent.reconciler.tracked import (
    START_GRACE_S,
    Tracked,
    drains_reported,
    engine_down,
    exit_reason,
    instance_key,
    service_slot,
)
from meshd.agent.reconciler.volumes import DropletVolumes
from meshd.core.rollout import DRAIN_S, replaced_beside
from meshd.core.spec import ServiceKind
from plugins.runtimes import (
    InstanceInfo,
    InstancePhase,
    InstanceSpec,
    Runtime,
    RuntimeFailure,
    RuntimeUnavailable,
)
from plugins.secrets import Secrets
from protocol.messages import Allocation, InstanceState, InstanceStatus, NodeStatus

log = logging.getLogger(__name__)
RESYNC_S = 2.0
PARALLEL_STARTS = 8  # instances started at once: a droplet's 40 instances in a few batches
UNWANTED_GRACE_S = 10.0  # an instance found that was never allocated here is stopped after


class Reconciler:
    def __init__(
        self, runtime: Runtime, droplet: str, address: str, data_dir: Path, secrets: Secrets
    ) -> None:
        self.runtime = runtime
        self.volumes: DropletVolumes | None = None  # set where the provider has volumes
        self.droplet = droplet
        self.address = address
        self.data_dir = data_dir
        self.secrets = secrets
        self.allocations: dict[str, Allocation] = {}
        # Web services no longer allocated here whose instance still serves: it drains first.
        self.leaving: dict[str, Allocation] = {}
        self.addresses: dict[str, str] = {droplet: address}
        self.peers: dict[str, NodeStatus] = {}  # every droplet's last report, for rollouts
        self.tracked: dict[str, Tracked] = {}  # by instance key
        self.unwanted: dict[str, float] = {}  # instance -> when first seen unwanted (monotonic)
        self.unavailable: str | None = None  # why the runtime's engine does not answer
        self._acting: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)  # per service
        self.loaded = False  # allocations are known: from the mesh, or from the local copy
        self._changed = asyncio.Event()
        self.observed = asyncio.Event()  # set whenever what `statuses()` reports may differ
        self._copy = LocalCopy(data_dir)
        self.artifacts = ArtifactDelivery(runtime, droplet, data_dir)  # what instances run
        self._health = HealthProber(
            address,
            self.tracked,
            lambda: self.allocations,
            self._health_changed,
            self._restart,
            DatastoreProbes(runtime.name, secrets),
        )

    # --- input -------------------------------------------------------------------------------

    async def apply(self, allocations: Mapping[str, Allocation]) -> None:
        """New allocations of this droplet (from KV); also kept on disk."""
        mine = {k: a for k, a in allocations.items() if self.droplet in a.droplets}
        if mine == self.allocations and self.loaded:
            return
        for key, allocation in self.allocations.items():
            if key not in mine and allocation.service_kind == ServiceKind.WEB.value:
                self.leaving[key] = allocation
        self.leaving = {k: a for k, a in self.leaving.items() if k not in mine}
        self.allocations = mine
        self.loaded = True
        await self._save()
        self._changed.set()

    async def set_addresses(self, addresses: Mapping[str, str]) -> None:
        """Droplet addresses (from KV), for the host variables of instances."""
        merged = {**addresses, self.droplet: self.address}
        if merged == self.addresses:
            return
        self.addresses = merged
        await self._save()
        self._changed.set()

    def set_peers(self, nodes: Mapping[str, NodeStatus]) -> None:
        """What every droplet reports (from KV): a waiting replacement may go on."""
        self.peers = dict(nodes)
        if any(t.waiting for t in self.tracked.values()):
            self._changed.set()

    def published(self, status: NodeStatus) -> None:
        """`status` was written to KV: the load balancer learns of draining instances now."""
        drains_reported(self.tracked, status, time.monotonic())

    async def _save(self) -> None:
        await self._copy.save(self.allocations, self.addresses)

    # --- loop --------------------------------------------------------------------------------

    async def run(self) -> None:
        if not self.loaded:
            copy = await asyncio.to_thread(self._copy.load)
            if copy is None:
                log.info("No local copy of allocations; waiting for the mesh, stopping nothing.")
            elif not self.loaded:  # the mesh's allocations may have come while it was read
                self.allocations = copy.allocations
                self.addresses = {**copy.addresses, self.droplet: self.address}
                self.loaded = True
                log.info("Applying local copy of allocations. services=%d", len(copy.allocations))
        async with aiohttp.ClientSession() as http:
            prober = asyncio.create_task(self._health.run(http))
            try:
                while True:
                    self._changed.clear()
                    await self.reconcile()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), RESYNC_S)
            finally:
                prober.cancel()
                await asyncio.gather(prober, return_exceptions=True)

    async def reconcile(self) -> None:
        listed_at = time.monotonic()
        try:
            listed = await self.runtime.list()
        except RuntimeUnavailable as err:
            self._engine_down(err.reason)
            return
        if self.unavailable is not None:
            log.info("Runtime answers again.")
            self._engine_down(None)
        infos = {info.key: info for info in listed}
        found: defaultdict[str, dict[int, InstanceInfo]] = defaultdict(dict)
        for key, info in infos.items():
            service, slot = service_slot(key)
            found[service][slot] = info
        now = time.monotonic()
        limit = asyncio.Semaphore(PARALLEL_STARTS)

        async def converge(service: str, allocation: Allocation) -> None:
            async with limit, self._acting[service]:
                await self._converge_service(service, allocation, found[service], listed_at, now)

        await asyncio.gather(*(converge(k, a) for k, a in list(self.allocations.items())))
        if not self.loaded:
            return  # allocations unknown (no readable copy, no answer yet): stop nothing
        unwanted = {k for k in infos if service_slot(k)[0] not in self.allocations}
        draining = {k for k in unwanted if self._drains(k, now)}
        await self._stop_unwanted(unwanted - draining, now)
        left = {service_slot(k)[0] for k in draining}
        self.leaving = {k: a for k, a in self.leaving.items() if k in left}
        for key in list(self.tracked):
            if key not in infos and service_slot(key)[0] not in self.allocations:
                del self.tracked[key]

    async def _converge_service(
        self,
        service: str,
        allocation: Allocation,
        found: dict[int, InstanceInfo],
        listed_at: float,
        now: float,
    ) -> None:
        """The slot that runs the allocation's generation converges; any other is retired."""
        slot = current_slot(service, allocation, found, self.tracked)
        key = instance_key(service, slot)
        current = self.tracked.get(key)
        if current is None or current.started <= listed_at:  # else restarted since the list
            await self._converge(key, slot, allocation, found, now)
        current = self.tracked.get(key)
        for other in (0, 1):
            if other == slot:
                continue
            if other in found:
                await self._retire(
                    instance_key(service, other), allocation, found[other], current, now
                )
            else:
                self.tracked.pop(instance_key(service, other), None)

    async def _retire(
        self,
        key: str,
        allocation: Allocation,
        info: InstanceInfo,
        replacement: Tracked | None,
        now: float,
    ) -> None:
        """An instance of an older generation: it serves until its replacement is healthy,
        then drains (reported, dropped by load balancers) and stops after `DRAIN_S`."""
        old = self.tracked.setdefault(
            key, Tracked(slot=service_slot(key)[1], started=now - START_GRACE_S)
        )
        old.generation = info.generation
        old.runtime_id = info.runtime_id
        beside = replaced_beside(allocation) and info.phase is InstancePhase.RUNNING
        if beside and not (replacement is not None and replacement.healthy):
            if old.draining:
                log.info("Replacement unhealthy; old instance serves again. instance=%s", key)
                old.draining, old.drain_reported = False, None
                self.observed.set()
            return
        if beside and not old.draining:
            log.info("Draining replaced instance. instance=%s", key)
            old.draining = True
            self.observed.set()
            return
        if beside and (old.drain_reported is None or now - old.drain_reported < DRAIN_S):
            return
        try:
            await self.runtime.stop(key)
        except (RuntimeFailure, RuntimeUnavailable) as err:
            log.warning("Replaced instance not stopped. instance=%s error=%s", key, err)
            return
        log.info("Replaced instance stopped. instance=%s generation=%d", key, info.generation)
        self.tracked.pop(key, None)
        self.observed.set()

    def _drains(self, key: str, now: float) -> bool:
        """Whether an instance whose web service is no longer allocated here keeps running a
        little: it is reported draining (load balancers drop it) and stops `DRAIN_S` after
        that report went out, so that requests it is serving finish."""
        tracked = self.tracked.get(key)
        if service_slot(key)[0] not in self.leaving or tracked is None or not tracked.healthy:
            return False
        if not tracked.draining:
            log.info("Draining instance no allocation wants. instance=%s", key)
            tracked.draining = True
            self.observed.set()
            return True
        return tracked.drain_reported is None or now - tracked.drain_reported < DRAIN_S

    async def _stop_unwanted(self, unwanted: set[str], now: float) -> None:
        """Instances whose allocation this agent saw go away are stopped at once (their port
        may be wanted by another); instances it never saw allocated (found on the droplet)
        go after a grace period, so that a moment without allocations never stops them."""
        for key in set(self.unwanted) - unwanted:
            del self.unwanted[key]
        for key in sorted(unwanted):
            since = self.unwanted.setdefault(key, now)
            if key not in self.tracked and now - since < UNWANTED_GRACE_S:
                continue
            log.info("Stopping instance no allocation wants. instance=%s", key)
            try:
                await self.runtime.stop(key)
            except (RuntimeFailure, RuntimeUnavailable) as err:
                log.warning("Instance not stopped. instance=%s error=%s", key, err)
                continue
            self.unwanted.pop(key, None)
            self.tracked.pop(key, None)

    def _engine_down(self, reason: str | None) -> None:
        if reason is not None and reason != self.unavailable:
            log.warning("Runtime not answering. reason=%s", reason)
        engine_down(self.tracked, self.allocations, reason, self.unavailable)
        self.unavailable = reason
        self.observed.set()

    async def _converge(
        self,
        key: str,
        slot: int,
        allocation: Allocation,
        found: dict[int, InstanceInfo],
        now: float,
    ) -> None:
        tracked = self.tracked.setdefault(key, Tracked(slot=slot, generation=allocation.generation))
        info = found.get(slot)
        running = info is not None and info.phase is InstancePhase.RUNNING
        if running and info is not None and info.generation == allocation.generation:
            tracked.runtime_id = info.runtime_id
            tracked.waiting = False
            if tracked.state is InstanceState.CRASHED:
                tracked.state = InstanceState.STARTING
            if not tracked.started:  # adopted after an agent restart
                tracked.started = now - START_GRACE_S
                tracked.engine_restarts = info.restarts
            if info.restarts > tracked.engine_restarts:
                tracked.restarted_by_engine(info, now)
                self._health.wake()
                self.observed.set()
                log.warning("Instance restarted by the runtime. instance=%s", key)
            return
        crashed = info is not None and not running and info.generation == allocation.generation
        if crashed and info is not None and tracked.state is not InstanceState.CRASHED:
            tracked.state = InstanceState.CRASHED
            tracked.healthy = False
            tracked.restarts += 1
            tracked.last_error = exit_reason(info)
            tracked.back_off(now)
            log.warning("Instance crashed. instance=%s reason=%s", key, tracked.last_error)
        if now < tracked.next_attempt:
            return
        if self._must_wait(key, tracked, allocation, found):
            return
        await self._start(key, slot, allocation, tracked, now)

    def _must_wait(
        self, key: str, tracked: Tracked, allocation: Allocation, found: dict[int, InstanceInfo]
    ) -> bool:
        """A replacement whose old instance still serves waits for the droplets before this
        one to finish theirs (meshd.core.rollout)."""
        earlier = waits_for(key, allocation, found, self.tracked, self.droplet, self.peers)
        if earlier is None:
            if tracked.waiting:
                tracked.waiting = False
                tracked.last_error = None
            return False
        if not tracked.waiting:
            log.info(
                "Replacement waits for an earlier droplet. instance=%s droplet=%s", key, earlier
            )
            self.observed.set()
        tracked.waiting = True
        tracked.last_error = f"waiting for {earlier} to replace its instance first"
        return True

    async def _start(
        self, key: str, slot: int, allocation: Allocation, tracked: Tracked, now: float
    ) -> None:
        try:
            if self.volumes is not None:
                await self.volumes.ensure(allocation)
            spec = self.spec(allocation, slot)
            await self.artifacts.ensure(key, allocation)
            info = await self.runtime.ensure(spec)
        except NotReady as err:
            tracked.state = InstanceState.STARTING
            tracked.last_error = str(err)
            return
        except (RuntimeFailure, RuntimeUnavailable, LookupError) as err:
            tracked.state = InstanceState.CRASHED
            tracked.healthy = False
            tracked.last_error = str(getattr(err, "reason", err))
            tracked.restarts += 1
            tracked.back_off(now)
            log.warning("Instance not started. instance=%s reason=%s", key, tracked.last_error)
            return
        tracked.started_as(info, allocation.generation)
        self._health.wake()
        self.observed.set()
        log.info("Instance started. instance=%s generation=%d", key, allocation.generation)

    def spec(self, allocation: Allocation, slot: int = 0) -> InstanceSpec:
        """What the runtime runs for `allocation` in `slot` here (`spec_for`)."""
        volume = self.volumes.path(allocation) if self.volumes is not None else None
        return spec_for(allocation, slot, self.address, self.addresses, self.secrets, volume)

    def _health_changed(self) -> None:
        self.observed.set()
        self._changed.set()  # an old instance beside a newly healthy one may drain now

    async def _restart(self, key: str) -> InstanceInfo | None:
        """Restart an instance the prober found unhealthy; None if it is no longer wanted."""
        service, slot = service_slot(key)
        allocation = self.allocations.get(service)
        if allocation is None:
            return None
        async with self._acting[service]:
            return await self.runtime.restart(self.spec(allocation, slot))

    def statuses(self) -> tuple[InstanceStatus, ...]:
        return statuses(self.tracked, self.allocations, self.leaving)
