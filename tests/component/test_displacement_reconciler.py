"""Displacement: which survivor takes which stateless instance of a failed droplet (pure), how
every agent adds the survivors to the allocations it runs, and the reconciler's side with real
processes: a displaced instance starts on the survivor, and when the failure ends it drains
before it stops."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import meshd.agent.reconciler
from meshd.agent.reconciler import Reconciler
from meshd.core.displacement import hosted
from protocol.messages import Allocation, FailureRecord, FailureState, NodeStatus
from tests.support import free_port
from tests.support.reconciling import allocation, publish_status, served
from tests.support.waiting import until

NOW = 1_000_000.0
BACKEND = "shop.prod.backend"


def node(name: str, size: str = "s-1vcpu-1gb") -> NodeStatus:
    return NodeStatus(
        droplet=name,
        address="10.0.0.1",
        incarnation=1,
        size=size,
        roles=(),
        instances=(),
        updated_at=NOW,
    )


def failure(droplet: str, displaced: dict[str, str] | None = None) -> FailureRecord:
    return FailureRecord(
        droplet=droplet,
        confirmed_by=("master",),
        confirmed_at=NOW,
        state=FailureState.DISPLACED,
        fence=3,
        displaced=displaced or {},
    )


def service(name: str, droplets: tuple[str, ...], **more: Any) -> Allocation:
    values: dict[str, Any] = {
        "service": name,
        "droplets": droplets,
        "service_kind": "web",
        "memory_mb": 64,
    }
    return allocation(**{**values, **more})


def mesh(*names: str) -> dict[str, NodeStatus]:
    return {name: node(name) for name in names}


async def test_a_displaced_instance_serves_on_the_survivor_then_drains_when_the_failure_ends(
    reconciler: Reconciler, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(meshd.agent.reconciler, "DRAIN_S", 0.5)
    port = free_port()
    allocations = {BACKEND: service("backend", ("web2",), port=port, spare_port=free_port())}
    await reconciler.apply(hosted(allocations, {}))
    await asyncio.sleep(0.5)
    assert reconciler.statuses() == ()  # web1 runs nothing of its own

    failures = {"web2": failure("web2", {BACKEND: "web1"})}
    await reconciler.apply(hosted(allocations, failures))
    await until(lambda: served(reconciler) == [port], "the displaced instance to serve")
    (displaced,) = reconciler.statuses()
    assert displaced.generation == allocations[BACKEND].generation

    # web2 is back: the instance is reported draining, keeps running until that report went
    # out and stops DRAIN_S later.
    await reconciler.apply(hosted(allocations, {}))
    await until(lambda: served(reconciler) == [], "the instance to drain")
    assert [(s.draining, s.healthy) for s in reconciler.statuses()] == [(True, True)]
    await asyncio.sleep(1.0)
    assert [i.key for i in await reconciler.runtime.list()] == [BACKEND]
    publish_status(reconciler)
    await until(lambda: reconciler.statuses() == (), "the drained instance to stop")
    await until(lambda: not reconciler.leaving, "nothing left to drain")
    assert await reconciler.runtime.list() == []
