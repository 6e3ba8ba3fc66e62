"""Displacement: which survivor takes which stateless instance of a failed droplet (pure), how
every agent adds the survivors to the allocations it runs, and the reconciler's side with real
processes: a displaced instance starts on the survivor, and when the failure ends it drains
before it stops."""

from __future__ import annotations

from typing import Any

from meshd.core.displacement import displace, hosted, not_displaced
from protocol.messages import Allocation, FailureRecord, FailureState, NodeStatus
from tests.support import factories
from tests.support.factories import allocation, node

BACKEND = "shop.prod.backend"


def failure(droplet: str, displaced: dict[str, str] | None = None) -> FailureRecord:
    return factories.failure(
        droplet, state=FailureState.DISPLACED, fence=3, displaced=displaced or {}
    )


def service(name: str, droplets: tuple[str, ...], **more: Any) -> Allocation:
    return allocation(service=name, droplets=droplets, **more)


def mesh(*names: str) -> dict[str, NodeStatus]:
    return {name: node(name) for name in names}


def test_a_failed_droplets_web_services_and_workers_go_to_survivors_that_lack_them() -> None:
    allocations = {
        "shop.prod.backend": service("backend", ("web1", "web2")),
        "shop.prod.worker": service("worker", ("web1",), service_kind="worker", port=None),
        "shop.prod.database": service("database", ("web1",), service_kind="database"),
        "shop.prod.files": service("files", ("web1",), data_path="/data"),
        "shop.uat.backend": service("backend", ("master",), env="uat", memory_mb=200),
    }
    plan = displace("web1", allocations, mesh("master", "web1", "web2"), {})
    # The worker ran on web1 alone: it goes first, to the droplet with the most room (web2
    # runs less than master). The backend still serves on web2; master is the only droplet
    # that lacks it.
    assert plan == {"shop.prod.worker": "web2", "shop.prod.backend": "master"}
    assert list(plan) == ["shop.prod.worker", "shop.prod.backend"]
    assert not_displaced("web1", allocations, plan) == ["shop.prod.database", "shop.prod.files"]


def test_survivors_without_room_other_failed_droplets_and_unknown_sizes_take_nothing() -> None:
    allocations = {
        "shop.prod.backend": service("backend", ("web1",), memory_mb=600),
        "shop.prod.frontend": service("frontend", ("web1",), memory_mb=200),
        "shop.prod.worker": service("worker", ("web1",), service_kind="worker", memory_mb=100),
        "big.prod.backend": service("backend", ("master",), project="big", memory_mb=500),
    }
    nodes = mesh("master", "web1", "web2") | {"odd": node("odd", size="no-such-size")}
    failures = {"web2": failure("web2")}
    # s-1vcpu-1gb allots 768 MB: master has 268 left, web2 failed, `odd` has no known size.
    plan = displace("web1", allocations, nodes, failures)
    assert plan == {"shop.prod.frontend": "master"}
    assert "shop.prod.worker" not in plan  # master's 68 MB left after the frontend do not fit
    assert not_displaced("web1", allocations, plan) == ["shop.prod.backend", "shop.prod.worker"]


def test_what_other_failures_displaced_counts_against_a_survivors_room() -> None:
    allocations = {
        "a.prod.backend": service("backend", ("web1",), project="a", memory_mb=400),
        "b.prod.backend": service("backend", ("web2",), project="b", memory_mb=400),
    }
    nodes = mesh("master", "web1", "web2")
    assert displace("web2", allocations, nodes, {}) == {"b.prod.backend": "master"}
    failures = {"web1": failure("web1", {"a.prod.backend": "master"})}
    assert displace("web2", allocations, nodes, failures) == {}  # 768 - 400 MB left on master


def test_agents_add_the_survivors_to_the_allocations_until_the_failure_record_goes() -> None:
    allocations = {
        "shop.prod.backend": service("backend", ("web1", "web2")),
        "shop.prod.worker": service("worker", ("web1",), service_kind="worker"),
    }
    failures = {
        "web1": failure("web1", {"shop.prod.backend": "master", "shop.prod.worker": "web3"}),
        "web3": failure("web3"),  # a survivor that failed meanwhile runs nothing
    }
    result = hosted(allocations, failures)
    assert result["shop.prod.backend"].droplets == ("web1", "web2", "master")
    assert result["shop.prod.worker"].droplets == ("web1",)
    # Same generation: the instances already running elsewhere are not restarted.
    assert result["shop.prod.backend"].generation == allocations["shop.prod.backend"].generation
    assert hosted(allocations, {}) == allocations
    gone = {"web1": failure("web1", {"no.such.service": "master"})}
    assert hosted(allocations, gone) == allocations


# --- the survivor's reconciler, with real processes -------------------------------------------
