"""Every agent's reconciler: makes the runtime run exactly this droplet's allocations.

It starts what is missing, stops what no allocation wants, restarts crashed instances and
instances whose health check failed several times in a row, with exponential backoff, and
reports what it observes. A new generation of a web service or worker starts beside the old
instance, which serves until the new one is healthy and is then drained and stopped
(`meshd.core.rollout`). The last applied allocations are kept on local disk, so instances
are brought back after an agent restart even while no NATS server answers (DESIGN.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import msgpack

from meshd.agent.instances import instance_spec
from meshd.core.envvars import resolve_hosts
from meshd.core.rollout import DRAIN_S, replaced_beside, slot_port, waiting_for
from meshd.core.spec import ServiceKind
from plugins.runtimes import (
    InstanceInfo,
    InstancePhase,
    InstanceSpec,
    Runtime,
    RuntimeFailure,
    RuntimeUnavailable,
)
from plugins.secrets import Secrets, lookup_names
from protocol import subjects
from protocol.codec import decode, encode
from protocol.errors import MeshError, ProtocolError
from protocol.messages import Allocation, InstanceState, InstanceStatus, NodeStatus

log = logging.getLogger(__name__)

RESYNC_S = 2.0
HEALTH_EVERY_S = 5.0  # instances that run and passed before (3 misses: 15 s)
HEALTH_STARTING_EVERY_S = 0.25  # instances waiting for their first good probe
HEALTH_TIMEOUT_S = 1.0
UNHEALTHY_AFTER = 3  # consecutive failed probes
START_GRACE_S = 5.0  # probes do not count while an instance starts
BACKOFF_MAX_S = 30.0
LOCAL_COPY = "allocations.msgpack"
PARALLEL_STARTS = 8  # instances started at once: a droplet's 40 instances in a few batches
UNWANTED_GRACE_S = 10.0  # an instance found that was never allocated here is stopped after


class NotReady(MeshError):
    """An instance cannot start yet (e.g. a droplet it needs has no known address)."""


@dataclass(slots=True)
class Tracked:
    """The reconciler's memory of one instance."""

    slot: int = 0
    generation: int = 0
    state: InstanceState = InstanceState.STARTING
    healthy: bool = False
    restarts: int = 0  # total, reported
    failures: int = 0  # in a row, for backoff; reset once healthy
    failed_probes: int = 0
    last_error: str | None = None
    runtime_id: str | None = None
    started: float = 0.0  # monotonic
    next_attempt: float = 0.0  # monotonic
    engine_restarts: int = 0  # restarts the runtime's engine made, as last seen
    last_failed_probe: float = 0.0  # monotonic; failures count at most once per HEALTH_EVERY_S
    draining: bool = False  # replaced: reported so, stopped DRAIN_S after that report went out
    drain_reported: float | None = None  # monotonic
    waiting: bool = False  # its replacement waits for an earlier droplet's (meshd.core.rollout)

    def back_off(self, now: float) -> None:
        self.failures += 1
        self.next_attempt = now + min(BACKOFF_MAX_S, 0.5 * 2 ** min(self.failures, 6))


class Reconciler:
    def __init__(
        self, runtime: Runtime, droplet: str, address: str, data_dir: Path, secrets: Secrets
    ) -> None:
        self.runtime = runtime
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
        self.loaded = False
        self._changed = asyncio.Event()
        self.observed = asyncio.Event()  # set whenever what `statuses()` reports may differ

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
        now = time.monotonic()
        for instance in status.instances:
            if not instance.draining:
                continue
            key = subjects.instance_key(
                instance.project, instance.env, instance.service, instance.slot
            )
            tracked = self.tracked.get(key)
            if tracked is not None and tracked.draining and tracked.drain_reported is None:
                tracked.drain_reported = now

    async def _save(self) -> None:
        copy = {
            "allocations": [encode(a) for a in self.allocations.values()],
            "addresses": dict(self.addresses),
        }
        await asyncio.to_thread(_write_atomically, self.data_dir / LOCAL_COPY, msgpack.packb(copy))

    def _load(self) -> tuple[dict[str, Allocation], dict[str, str]]:
        path = self.data_dir / LOCAL_COPY
        if not path.exists():
            return {}, {}
        try:
            copy = msgpack.unpackb(path.read_bytes())
            items = [decode(raw, Allocation) for raw in copy["allocations"]]
            addresses = {str(k): str(v) for k, v in copy["addresses"].items()}
        except (ProtocolError, ValueError, TypeError, KeyError, msgpack.UnpackException) as err:
            log.error("Local copy of allocations unreadable; waiting for the mesh. error=%s", err)
            return {}, {}
        return {f"{a.project}.{a.env}.{a.service}": a for a in items}, addresses

    # --- loop --------------------------------------------------------------------------------

    async def run(self) -> None:
        if not self.loaded:
            allocations, addresses = await asyncio.to_thread(self._load)
            if not self.loaded:  # the mesh's allocations may have come while it was read
                self.allocations = allocations
                self.addresses = {**addresses, self.droplet: self.address}
                self.loaded = True
                log.info("Applying local copy of allocations. instances=%d", len(allocations))
        async with aiohttp.ClientSession() as http:
            prober = asyncio.create_task(self._probe_loop(http))
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
            service, slot = _service_slot(key)
            found[service][slot] = info
        now = time.monotonic()
        limit = asyncio.Semaphore(PARALLEL_STARTS)

        async def converge(service: str, allocation: Allocation) -> None:
            async with limit, self._acting[service]:
                await self._converge_service(service, allocation, found[service], listed_at, now)

        await asyncio.gather(*(converge(k, a) for k, a in list(self.allocations.items())))
        unwanted = {k for k in infos if _service_slot(k)[0] not in self.allocations}
        draining = {k for k in unwanted if self._drains(k, now)}
        await self._stop_unwanted(unwanted - draining, now)
        left = {_service_slot(k)[0] for k in draining}
        self.leaving = {k: a for k, a in self.leaving.items() if k in left}
        for key in list(self.tracked):
            if key not in infos and _service_slot(key)[0] not in self.allocations:
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
        slot = self._current_slot(service, allocation, found)
        key = _instance_key(service, slot)
        current = self.tracked.get(key)
        if current is None or current.started <= listed_at:  # else restarted since the list
            await self._converge(key, slot, allocation, found, now)
        current = self.tracked.get(key)
        for other in (0, 1):
            if other == slot:
                continue
            if other in found:
                await self._retire(
                    _instance_key(service, other), allocation, found[other], current, now
                )
            else:
                self.tracked.pop(_instance_key(service, other), None)

    def _current_slot(
        self, service: str, allocation: Allocation, found: dict[int, InstanceInfo]
    ) -> int:
        """Where the allocation's generation runs, or is to start: beside the instance that
        serves (healthy first, then newest), or in place when the service is not replaced
        beside its old instance."""
        current = sorted(
            (info.phase is not InstancePhase.RUNNING, slot)
            for slot, info in found.items()
            if info.generation == allocation.generation
        )
        if current:
            return current[0][1]
        if not replaced_beside(allocation):
            return 0
        running = [
            (
                self.tracked.get(_instance_key(service, slot), Tracked()).healthy,
                info.generation,
                slot,
            )
            for slot, info in found.items()
            if info.phase is InstancePhase.RUNNING
        ]
        return 1 - max(running)[2] if running else 0

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
            key, Tracked(slot=_service_slot(key)[1], started=now - START_GRACE_S)
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
        if _service_slot(key)[0] not in self.leaving or tracked is None or not tracked.healthy:
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
        """Every instance says why nothing can be done while the engine is away."""
        if reason is not None and reason != self.unavailable:
            log.warning("Runtime not answering. reason=%s", reason)
        services = {_service_slot(key)[0] for key in self.tracked}
        for service in set(self.allocations) - services:
            self.tracked[service] = Tracked()
        for key, tracked in self.tracked.items():
            if _service_slot(key)[0] not in self.allocations:
                continue
            if reason is not None:
                tracked.last_error = reason
            elif tracked.last_error == self.unavailable:
                tracked.last_error = None
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
                self._restarted_by_engine(key, tracked, info, now)
            return
        crashed = info is not None and not running and info.generation == allocation.generation
        if crashed and info is not None and tracked.state is not InstanceState.CRASHED:
            tracked.state = InstanceState.CRASHED
            tracked.healthy = False
            tracked.restarts += 1
            tracked.last_error = _exit_reason(info)
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
        service, slot = _service_slot(key)
        old = self.tracked.get(_instance_key(service, 1 - slot))
        serving = old is not None and old.healthy and (1 - slot) in found
        earlier = (
            waiting_for(allocation, self.droplet, self.peers, time.time())
            if serving and replaced_beside(allocation)
            else None
        )
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

    def _restarted_by_engine(
        self, key: str, tracked: Tracked, info: InstanceInfo, now: float
    ) -> None:
        tracked.restarts += info.restarts - tracked.engine_restarts
        tracked.engine_restarts = info.restarts
        tracked.last_error = f"restarted by the runtime after {_exit_reason(info)}"
        tracked.state = InstanceState.STARTING
        tracked.healthy = False
        tracked.failed_probes = 0
        tracked.started = now
        self.observed.set()
        log.warning("Instance restarted by the runtime. instance=%s", key)

    async def _start(
        self, key: str, slot: int, allocation: Allocation, tracked: Tracked, now: float
    ) -> None:
        try:
            spec = self._spec(allocation, slot)
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
        tracked.generation = allocation.generation
        tracked.runtime_id = info.runtime_id
        tracked.engine_restarts = info.restarts
        tracked.state = InstanceState.STARTING
        tracked.healthy = False  # until its own first good probe
        tracked.failed_probes = 0
        self.observed.set()
        tracked.started = time.monotonic()
        log.info("Instance started. instance=%s generation=%d", key, allocation.generation)

    def _spec(self, allocation: Allocation, slot: int) -> InstanceSpec:
        hosts = resolve_hosts(allocation.hosts, self.addresses)
        if hosts is None:
            missing = sorted(set(allocation.hosts.values()) - set(self.addresses))
            raise NotReady(f"waiting for the address of {', '.join(missing)}")
        secrets: dict[str, bytes] = {}
        for name in allocation.secrets:
            value = self.secrets.get(name, allocation.project, allocation.env)
            if value is None:
                tried = ", ".join(lookup_names(name, allocation.project, allocation.env))
                raise LookupError(f"secret {name!r} not found (looked up {tried})")
            secrets[name] = value
        return instance_spec(allocation, self.address, hosts, secrets, slot)

    # --- health ------------------------------------------------------------------------------

    async def _probe_loop(self, http: aiohttp.ClientSession) -> None:
        """Starting instances are probed often (they count as healthy on their first good
        probe), the others every `HEALTH_EVERY_S`."""
        last_full = 0.0
        while True:
            await asyncio.sleep(HEALTH_STARTING_EVERY_S)
            now = time.monotonic()
            full = now - last_full >= HEALTH_EVERY_S
            if full:
                last_full = now
            probed = (InstanceState.STARTING, InstanceState.RUNNING, InstanceState.UNHEALTHY)
            keys = [
                k
                for k, t in self.tracked.items()
                if _service_slot(k)[0] in self.allocations
                and t.state in probed
                and not t.waiting
                and (full or t.state is InstanceState.STARTING)
            ]
            results = await asyncio.gather(*(self._probe(http, k) for k in keys))
            for key, ok in zip(keys, results, strict=True):
                await self._judge(key, ok)

    async def _probe(self, http: aiohttp.ClientSession, key: str) -> bool:
        service, slot = _service_slot(key)
        allocation = self.allocations.get(service)
        port = slot_port(allocation, slot) if allocation is not None else None
        if allocation is None:
            return False
        if port is None or not allocation.health_path:
            return True  # workers and datastores without a health path: alive is healthy
        url = f"http://{self.address}:{port}{allocation.health_path}"
        try:
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_S)) as r:
                return 200 <= r.status < 400
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def _judge(self, key: str, ok: bool) -> None:
        service, slot = _service_slot(key)
        tracked = self.tracked.get(key)
        allocation = self.allocations.get(service)
        if tracked is None or allocation is None or tracked.state is InstanceState.CRASHED:
            return
        now = time.monotonic()
        if ok:
            if not tracked.healthy:
                self.observed.set()
                self._changed.set()  # an old instance beside it may drain now
            tracked.failed_probes = 0
            tracked.healthy = True
            tracked.state = InstanceState.RUNNING
            if now - tracked.started > BACKOFF_MAX_S:
                tracked.restarts = (
                    0 if tracked.restarts and tracked.last_error is None else tracked.restarts
                )
            return
        if now - tracked.started < START_GRACE_S:
            return
        if now - tracked.last_failed_probe < HEALTH_EVERY_S - HEALTH_STARTING_EVERY_S:
            return  # a slow start (a busy engine) gets as long as a running instance
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
            async with self._acting[service]:
                info = await self.runtime.restart(self._spec(allocation, slot))
        except (RuntimeFailure, RuntimeUnavailable, LookupError, NotReady) as err:
            tracked.last_error = str(err)
            return
        tracked.runtime_id = info.runtime_id
        tracked.engine_restarts = info.restarts
        tracked.started = time.monotonic()
        tracked.failed_probes = 0
        tracked.healthy = False
        tracked.state = InstanceState.STARTING

    # --- output ------------------------------------------------------------------------------

    def statuses(self) -> tuple[InstanceStatus, ...]:
        mine: defaultdict[str, list[tuple[int, Tracked]]] = defaultdict(list)
        for key, tracked in self.tracked.items():
            service, slot = _service_slot(key)
            mine[service].append((slot, tracked))
        result = []
        for service, allocation in sorted((self.leaving | self.allocations).items()):
            if service not in self.allocations and not mine.get(service):
                continue  # left, and nothing of it runs any more
            for slot, tracked in sorted(mine.get(service) or [(0, Tracked())], key=_first):
                result.append(
                    InstanceStatus(
                        project=allocation.project,
                        env=allocation.env,
                        service=allocation.service,
                        state=tracked.state,
                        healthy=tracked.healthy,
                        restarts=tracked.restarts,
                        last_error=tracked.last_error,
                        generation=tracked.generation,
                        runtime_id=tracked.runtime_id,
                        slot=slot,
                        port=slot_port(allocation, slot),
                        draining=tracked.draining,
                    )
                )
        return tuple(result)


def _first(item: tuple[int, Tracked]) -> int:
    return item[0]


def _service_slot(key: str) -> tuple[str, int]:
    """An instance key's allocation key and slot (a key no slot parses belongs to no one)."""
    try:
        project, env, service, slot = subjects.parse_instance_key(key)
    except ProtocolError:
        return key, 0
    return subjects.alloc_key(project, env, service), slot


def _instance_key(service: str, slot: int) -> str:
    return f"{service}.1" if slot else service


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _exit_reason(info: InstanceInfo) -> str:
    code = f"exit code {info.exit_code}" if info.exit_code is not None else "exited"
    return f"{code}: {info.detail}" if info.detail else code
