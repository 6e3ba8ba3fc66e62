"""Replacing a service's instances without losing a request (pure).

A new generation of a web service or worker starts *beside* the instance it replaces: in the
other slot, on the allocation's other port (`spare_port` for web services). The old instance
serves until the new one is healthy, is then reported `draining` (load balancers drop it) and
stopped `DRAIN_S` after that report went out. Datastores and services with a data volume are
replaced in place: two copies must never share one data directory.

Droplets take turns in the allocation's order: a droplet starts its replacement only once
every droplet before it has a healthy instance of the new generation, has nothing healthy
left to protect, or no longer reports. A new generation that never gets healthy therefore
stops the rollout at the first droplet, where the old instance keeps serving.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from meshd.core.health import STALE_AFTER_S
from meshd.core.spec import ServiceKind
from protocol.messages import Allocation, InstanceStatus, NodeStatus

DRAIN_S = 5.0  # an old instance stops this long after its droplet reported it draining


def replaced_beside(allocation: Allocation) -> bool:
    """Whether a new generation starts next to the old instance (else: in its place)."""
    if allocation.data_path is not None:
        return False
    if allocation.service_kind == ServiceKind.WORKER.value:
        return True
    return allocation.service_kind == ServiceKind.WEB.value and (
        allocation.port is None or allocation.spare_port is not None
    )


def slot_port(allocation: Allocation, slot: int) -> int | None:
    """Where the instance in `slot` listens on its droplet."""
    if allocation.port is None:
        return None
    return allocation.spare_port if slot else allocation.port


def turn_peers(droplet: str, allocations: Iterable[Allocation]) -> frozenset[str]:
    """The droplets whose reports `droplet` needs for its turns (`waiting_for`): those
    before it in the allocations it runs that replace beside."""
    peers: set[str] = set()
    for allocation in allocations:
        if droplet in allocation.droplets and replaced_beside(allocation):
            peers.update(allocation.droplets[: allocation.droplets.index(droplet)])
    return frozenset(peers)


def waiting_for(
    allocation: Allocation, droplet: str, nodes: Mapping[str, NodeStatus], now: float
) -> str | None:
    """The droplet before `droplet` whose replacement is still under way, or None when
    `droplet` may start replacing its instance of `allocation`."""
    for earlier in allocation.droplets:
        if earlier == droplet:
            return None
        node = nodes.get(earlier)
        if node is None or now - node.updated_at >= STALE_AFTER_S:
            continue
        mine = [i for i in node.instances if _same_service(i, allocation)]
        replaced = any(i.healthy and i.generation == allocation.generation for i in mine)
        protecting = any(i.healthy and not i.draining for i in mine)
        if protecting and not replaced:
            return earlier
    return None


def _same_service(instance: InstanceStatus, allocation: Allocation) -> bool:
    return (instance.project, instance.env, instance.service) == (
        allocation.project,
        allocation.env,
        allocation.service,
    )


def replaced_on(
    allocation: Allocation, generation: int, nodes: Mapping[str, NodeStatus]
) -> list[str]:
    """The allocation's droplets that finished replacing their instance with `generation` (or
    newer): it is healthy, and no other instance of the service is left there."""
    done = []
    for droplet in allocation.droplets:
        node = nodes.get(droplet)
        mine = [i for i in node.instances if _same_service(i, allocation)] if node else []
        if (
            len(mine) == 1
            and mine[0].generation >= generation
            and mine[0].healthy
            and not mine[0].draining
        ):
            done.append(droplet)
    return done
