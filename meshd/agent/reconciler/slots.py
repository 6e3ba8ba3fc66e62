"""A service's two slots on one droplet: which one runs the allocation's generation, and what
the droplet reports of each. Pure: the reconciler's state in, values out."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping

from meshd.agent.reconciler.tracked import Tracked, instance_key, service_slot
from meshd.core.rollout import replaced_beside, slot_port, waiting_for
from plugins.runtimes import InstanceInfo, InstancePhase
from protocol.messages import Allocation, InstanceStatus, NodeStatus


def current_slot(
    service: str,
    allocation: Allocation,
    found: Mapping[int, InstanceInfo],
    tracked: Mapping[str, Tracked],
) -> int:
    """Where the allocation's generation runs, or is to start: beside the instance that
    serves (healthy first, then newest), or in place when the service is not replaced beside
    its old instance."""
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
        (tracked.get(instance_key(service, slot), Tracked()).healthy, info.generation, slot)
        for slot, info in found.items()
        if info.phase is InstancePhase.RUNNING
    ]
    return 1 - max(running)[2] if running else 0


def waits_for(
    key: str,
    allocation: Allocation,
    found: Mapping[int, InstanceInfo],
    tracked: Mapping[str, Tracked],
    droplet: str,
    peers: Mapping[str, NodeStatus],
) -> str | None:
    """The earlier droplet a replacement waits for: one whose old instance still serves
    waits for the droplets before this one to finish theirs (`meshd.core.rollout`)."""
    service, slot = service_slot(key)
    old = tracked.get(instance_key(service, 1 - slot))
    serving = old is not None and old.healthy and (1 - slot) in found
    if not serving or not replaced_beside(allocation):
        return None
    return waiting_for(allocation, droplet, peers, time.time())


def statuses(
    tracked: Mapping[str, Tracked],
    allocations: Mapping[str, Allocation],
    leaving: Mapping[str, Allocation],
) -> tuple[InstanceStatus, ...]:
    """What the droplet reports of its instances: every allocated service (a slot it has not
    started yet included) and the leaving ones that still run."""
    mine: defaultdict[str, list[tuple[int, Tracked]]] = defaultdict(list)
    for key, state in tracked.items():
        service, slot = service_slot(key)
        mine[service].append((slot, state))
    result = []
    for service, allocation in sorted({**leaving, **allocations}.items()):
        if service not in allocations and not mine.get(service):
            continue  # left, and nothing of it runs any more
        for slot, state in sorted(mine.get(service) or [(0, Tracked())], key=_slot):
            result.append(
                InstanceStatus(
                    project=allocation.project,
                    env=allocation.env,
                    service=allocation.service,
                    state=state.state,
                    healthy=state.healthy,
                    restarts=state.restarts,
                    last_error=state.last_error,
                    generation=state.generation,
                    runtime_id=state.runtime_id,
                    slot=slot,
                    port=slot_port(allocation, slot),
                    draining=state.draining,
                )
            )
    return tuple(result)


def _slot(item: tuple[int, Tracked]) -> int:
    return item[0]
