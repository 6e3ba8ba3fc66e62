"""Upstreams come from the observed state (pure): only web services, only instances that are
healthy, not draining and sit on a droplet that reports, each on the port it reports."""

from __future__ import annotations

from typing import Any

from meshd.core.routes import Upstream, sites, upstreams
from meshd.core.spec import DesiredState, ProjectSpec, ServiceKind, ServiceSpec
from protocol.messages import Allocation, InstanceStatus, NodeStatus
from tests.support import factories
from tests.support.factories import NOW, instance


def allocation(service: str, kind: str = "web", **more: Any) -> Allocation:
    return factories.allocation(service=service, service_kind=kind, image="shop:1", **more)


def node(name: str, address: str, *instances: InstanceStatus, age: float = 1.0) -> NodeStatus:
    return factories.node(name, *instances, address=address, updated_at=NOW - age)


def test_only_healthy_current_instances_on_live_droplets_are_upstream_servers() -> None:
    nodes = {
        "web1": node("web1", "10.0.0.1", instance()),
        "web2": node("web2", "10.0.0.2", instance(healthy=False)),
        "web3": node("web3", "10.0.0.3", instance(), age=600.0),  # stopped reporting
        "web4": node("web4", "10.0.0.4", instance()),  # not allocated there
    }
    (backend,) = upstreams([allocation("backend")], nodes, NOW)
    assert backend == Upstream("shop", "prod", "backend", ("10.0.0.1:8100",))
    assert (backend.name, backend.route) == ("shop_prod_backend", "/shop-prod/backend/")


def test_during_a_rollout_old_and_new_serve_until_the_old_drains_and_workers_never() -> None:
    nodes = {
        "web1": node(
            "web1",
            "10.0.0.1",
            instance(generation=1, port=8100, draining=True),
            instance(generation=2, port=8600, slot=1),
            instance(service="db"),
            instance(service="w"),
        ),
        "web2": node("web2", "10.0.0.2", instance(generation=1, port=8100)),
    }
    found = upstreams(
        [
            allocation("backend", spare_port=8600),
            allocation("db", kind="database"),
            allocation("w", kind="worker", port=None),
        ],
        nodes,
        NOW,
    )
    assert found == (Upstream("shop", "prod", "backend", ("10.0.0.1:8600", "10.0.0.2:8100")),)


def test_a_project_with_domains_gets_a_site_whose_root_is_the_frontend() -> None:
    service = ServiceSpec(name="frontend", kind=ServiceKind.WEB, memory_mb=32)
    project = ProjectSpec(
        name="shop",
        servers=1,
        master_size="s-1vcpu-1gb",
        web_size="s-1vcpu-1gb",
        services=(service,),
        domains={"prod": ("shop.example.com",), "uat": ("uat.shop.example.com",)},
    )
    found = (
        Upstream("shop", "prod", "backend", ("10.0.0.1:8100",)),
        Upstream("shop", "prod", "frontend", ("10.0.0.1:9100",)),
    )

    (site,) = sites(DesiredState(projects=(project,)), found)  # uat has no web upstreams

    assert (site.env, site.domains, site.root.service) == (
        "prod",
        ("shop.example.com",),
        "frontend",
    )
    assert site.upstreams == found
