"""The reconciler's memory of one instance, and the names it keys it by."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from meshd.core.backoff import delay
from plugins.runtimes import InstanceInfo
from protocol import subjects
from protocol.errors import ProtocolError
from protocol.messages import InstanceState, NodeStatus

BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 30.0
START_GRACE_S = 5.0  # probes do not count while an instance starts


@dataclass(slots=True)
class Tracked:
    """What the reconciler knows of one instance (times on the monotonic clock)."""

    slot: int = 0
    generation: int = 0
    state: InstanceState = InstanceState.STARTING
    healthy: bool = False
    restarts: int = 0  # total, reported
    failures: int = 0  # in a row, for backoff; reset once healthy
    failed_probes: int = 0
    last_error: str | None = None
    runtime_id: str | None = None
    started: float = 0.0
    next_attempt: float = 0.0
    engine_restarts: int = 0  # restarts the runtime's engine made, as last seen
    last_failed_probe: float = 0.0  # failures count at most once per full probe period
    draining: bool = False  # replaced: reported so, stopped DRAIN_S after that report went out
    drain_reported: float | None = None
    waiting: bool = False  # its replacement waits for an earlier droplet's (meshd.core.rollout)

    def started_as(self, info: InstanceInfo, generation: int) -> None:
        """The runtime (re)started it: healthy only from its own first good probe, and not
        draining (a rollout that overtakes the one before starts in a draining one's slot)."""
        self.draining, self.drain_reported = False, None
        self.generation = generation
        self.runtime_id = info.runtime_id
        self.engine_restarts = info.restarts
        self.state = InstanceState.STARTING
        self.healthy = False
        self.failed_probes = 0
        self.started = time.monotonic()

    def restarted_by_engine(self, info: InstanceInfo, now: float) -> None:
        """The runtime's engine restarted it (Docker's restart policy): counted, and judged
        anew from its next probe."""
        self.restarts += info.restarts - self.engine_restarts
        self.engine_restarts = info.restarts
        self.last_error = f"restarted by the runtime after {exit_reason(info)}"
        self.state = InstanceState.STARTING
        self.healthy = False
        self.failed_probes = 0
        self.started = now

    def back_off(self, now: float) -> None:
        """One more failure in a row: the next attempt waits, longer each time (jittered, so
        that instances that failed together are not restarted together)."""
        self.failures += 1
        self.next_attempt = now + max(0.5, delay(self.failures, BACKOFF_BASE_S, BACKOFF_MAX_S))


def service_slot(key: str) -> tuple[str, int]:
    """An instance key's allocation key and slot (a key no slot parses belongs to no one)."""
    try:
        project, env, service, slot = subjects.parse_instance_key(key)
    except ProtocolError:
        return key, 0
    return subjects.alloc_key(project, env, service), slot


def instance_key(service: str, slot: int) -> str:
    """The instance key of an allocation key's slot."""
    return subjects.instance_key(*subjects.parse_alloc_key(service), slot)


def exit_reason(info: InstanceInfo) -> str:
    code = f"exit code {info.exit_code}" if info.exit_code is not None else "exited"
    return f"{code}: {info.detail}" if info.detail else code


def drains_reported(tracked: dict[str, Tracked], status: NodeStatus, now: float) -> None:
    """`status` was written to KV: the load balancer learns of its draining instances now."""
    for instance in status.instances:
        if not instance.draining:
            continue
        key = subjects.instance_key(instance.project, instance.env, instance.service, instance.slot)
        found = tracked.get(key)
        if found is not None and found.draining and found.drain_reported is None:
            found.drain_reported = now


def engine_down(
    tracked: dict[str, Tracked],
    allocations: Mapping[str, object],
    reason: str | None,
    before: str | None,
) -> None:
    """Every allocated instance says why nothing can be done while the engine is away
    (`reason`), or stops saying so once it answers again (`reason` None; `before` the reason
    it had)."""
    services = {service_slot(key)[0] for key in tracked}
    for service in set(allocations) - services:
        tracked[service] = Tracked()
    for key, one in tracked.items():
        if service_slot(key)[0] not in allocations:
            continue
        if reason is not None:
            one.last_error = reason
        elif one.last_error == before:
            one.last_error = None
