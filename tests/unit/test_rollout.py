"""Replacing instances without losing a request: which services start beside the old
instance, how droplets take turns (pure), and the reconciler's side of it with real processes:
the new generation starts in the other slot on the spare port, the old one serves until the new
one is healthy, then drains and stops once its draining was reported."""

from __future__ import annotations

from typing import Any

from meshd.core.rollout import replaced_beside, replaced_on, slot_port, waiting_for
from protocol.messages import InstanceState, InstanceStatus, NodeStatus
from tests.support import factories
from tests.support.factories import NOW
from tests.support.reconciling import allocation


def instance(generation: int, healthy: bool = True, **more: Any) -> InstanceStatus:
    state = InstanceState.RUNNING if healthy else InstanceState.STARTING
    return factories.instance(generation=generation, healthy=healthy, state=state, **more)


def node(name: str, *instances: InstanceStatus, age: float = 1.0) -> NodeStatus:
    return factories.node(name, *instances, updated_at=NOW - age)


def test_web_services_and_workers_start_beside_the_old_instance_datastores_in_place() -> None:
    assert replaced_beside(allocation())
    assert replaced_beside(allocation(service_kind="worker", port=None, spare_port=None))
    assert not replaced_beside(allocation(service_kind="database", spare_port=None))
    assert not replaced_beside(allocation(data_path="/data"))  # one volume, never two writers
    assert not replaced_beside(allocation(spare_port=None))  # allocated before spares
    assert (slot_port(allocation(), 0), slot_port(allocation(), 1)) == (8100, 8600)


def test_droplets_take_turns_in_the_allocations_order() -> None:
    serving_old = node("web1", instance(1))
    assert waiting_for(allocation(), "web1", {"web1": serving_old}, NOW) is None
    assert waiting_for(allocation(), "web2", {"web1": serving_old}, NOW) == "web1"

    # web1's new instance starts: web2 still waits, and goes on once it is healthy.
    starting = node("web1", instance(1), instance(2, healthy=False, slot=1))
    assert waiting_for(allocation(), "web2", {"web1": starting}, NOW) == "web1"
    replaced = node("web1", instance(1, draining=True), instance(2, slot=1))
    assert waiting_for(allocation(), "web2", {"web1": replaced}, NOW) is None
    assert waiting_for(allocation(), "web3", {"web1": replaced, "web2": serving_old}, NOW) == "web2"


def test_a_droplet_with_nothing_to_protect_or_that_stopped_reporting_is_not_waited_for() -> None:
    broken = node("web1", instance(1, healthy=False))
    assert waiting_for(allocation(), "web2", {"web1": broken}, NOW) is None
    silent = node("web1", instance(1), age=600.0)
    assert waiting_for(allocation(), "web2", {"web1": silent}, NOW) is None
    assert waiting_for(allocation(), "web2", {}, NOW) is None


def test_a_droplet_is_replaced_when_only_the_new_healthy_instance_is_left() -> None:
    nodes = {
        "web1": node("web1", instance(2, slot=1)),
        "web2": node("web2", instance(1, draining=True), instance(2, slot=1)),
        "web3": node("web3", instance(2, healthy=False)),
    }
    assert replaced_on(allocation(), 2, nodes) == ["web1"]
    assert replaced_on(allocation(), 3, nodes) == []


# --- the reconciler, with real processes --------------------------------------------------
