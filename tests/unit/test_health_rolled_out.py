"""Whether a service is in the middle of a rollout: what `meshctl secret` waits out before it
changes a datastore's password in place (an instance started before the new value was sealed
but not yet connected would be refused)."""

from __future__ import annotations

from meshd.core.health import rolled_out
from protocol.messages import Allocation, InstanceState, InstanceStatus, NodeStatus

NOW = 1000.0


def allocation(generation: int = 3, restart: int = 1) -> Allocation:
    return Allocation(
        project="shop",
        env="prod",
        service="backend",
        generation=generation,
        droplets=("master", "web1"),
        port=8000,
        image=None,
        command="serve",
        memory_mb=128,
        restart=restart,
    )


def instance(generation: int, healthy: bool = True, slot: int = 0) -> InstanceStatus:
    return InstanceStatus(
        project="shop",
        env="prod",
        service="backend",
        state=InstanceState.RUNNING,
        healthy=healthy,
        restarts=0,
        generation=generation,
        slot=slot,
    )


def node(name: str, *instances: InstanceStatus, updated_at: float = NOW) -> NodeStatus:
    return NodeStatus(
        droplet=name,
        address="127.0.0.1",
        incarnation=1,
        size="s-1vcpu-1gb",
        roles=(),
        instances=instances,
        updated_at=updated_at,
    )


def test_every_droplet_on_the_current_generation_healthy_is_rolled_out() -> None:
    nodes = {"master": node("master", instance(3)), "web1": node("web1", instance(3))}
    assert rolled_out(allocation(), 1, nodes, NOW)


def test_a_restart_the_scheduler_has_not_taken_is_a_rollout_to_come() -> None:
    nodes = {"master": node("master", instance(3)), "web1": node("web1", instance(3))}
    assert not rolled_out(allocation(restart=1), 2, nodes, NOW)


def test_an_old_generation_beside_the_new_one_is_a_rollout_under_way() -> None:
    nodes = {
        "master": node("master", instance(3), instance(2, slot=1)),
        "web1": node("web1", instance(3)),
    }
    assert not rolled_out(allocation(), 1, nodes, NOW)


def test_a_new_instance_not_yet_healthy_is_a_rollout_under_way() -> None:
    nodes = {
        "master": node("master", instance(3, healthy=False)),
        "web1": node("web1", instance(3)),
    }
    assert not rolled_out(allocation(), 1, nodes, NOW)


def test_a_droplet_that_does_not_report_leaves_it_unfinished() -> None:
    nodes = {"master": node("master", instance(3)), "web1": node("web1", instance(3), updated_at=0)}
    assert not rolled_out(allocation(), 1, nodes, NOW)
