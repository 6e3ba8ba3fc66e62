"""Which instances count, from what droplets report: a droplet's report is current for
`STALE_AFTER_S` (agents write it when it changes and once a minute regardless; a droplet
that dies is left out by its failure record within seconds, this only catches one nobody
watches); an instance serves its allocation when it runs the current generation,
passes its health check and is not draining; a load balancer may use every healthy instance
that is not draining, old generations beside new ones during a rollout."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from protocol.messages import Allocation, InstanceStatus, NodeStatus

STALE_AFTER_S = 150.0  # two refreshes of an unchanged report missed, and then some


def live_instances(
    allocation: Allocation, nodes: Mapping[str, NodeStatus], now: float
) -> Iterator[tuple[NodeStatus, InstanceStatus]]:
    """The allocation's instances as reported by its droplets that still report."""
    key = (allocation.project, allocation.env, allocation.service)
    for droplet in allocation.droplets:
        node = nodes.get(droplet)
        if node is None or now - node.updated_at >= STALE_AFTER_S:
            continue
        for instance in node.instances:
            if (instance.project, instance.env, instance.service) == key:
                yield node, instance


def serves(instance: InstanceStatus, allocation: Allocation) -> bool:
    """Whether the instance counts towards the allocation: its current generation, healthy."""
    return (
        instance.healthy and instance.generation == allocation.generation and not instance.draining
    )


def healthy_servers(
    allocation: Allocation, nodes: Mapping[str, NodeStatus], now: float
) -> list[str]:
    """`address:port` of the instances that pass their health check, are not draining and sit
    on a droplet that reports: what a load balancer may use. During a rollout that includes
    old generations still serving beside the new (meshd.core.rollout)."""
    return sorted(
        f"{node.address}:{instance.port or allocation.port}"
        for node, instance in live_instances(allocation, nodes, now)
        if instance.healthy and not instance.draining
    )


def rolled_out(
    allocation: Allocation, restarts_asked: int, nodes: Mapping[str, NodeStatus], now: float
) -> bool:
    """Whether no rollout of the allocation is under way: the scheduler has taken every restart
    asked, and each of its droplets runs the current generation healthy and nothing older."""
    if restarts_asked > allocation.restart:
        return False
    instances = list(live_instances(allocation, nodes, now))
    current = sum(serves(instance, allocation) for _, instance in instances)
    return current == len(allocation.droplets) == len(instances)
