"""Values for tests, each with sensible defaults that any field can override: an allocation
(shop/prod/backend), an instance's status, a droplet's report and a failure record."""

from __future__ import annotations

from typing import Any

from protocol.cards import NodeCard
from protocol.messages import (
    Allocation,
    FailureRecord,
    FailureState,
    InstanceState,
    InstanceStatus,
    NodeStatus,
)

NOW = 1_700_000_000.0


def allocation(**more: Any) -> Allocation:
    values: dict[str, Any] = {
        "project": "shop",
        "env": "prod",
        "service": "backend",
        "generation": 2,
        "droplets": ("web1", "web2", "web3"),
        "port": 8100,
        "image": None,
        "command": None,
        "memory_mb": 64,
    }
    return Allocation(**{**values, **more})


def instance(**more: Any) -> InstanceStatus:
    """A healthy running instance of shop/prod/backend at generation 2."""
    healthy = more.get("healthy", True)
    values: dict[str, Any] = {
        "project": "shop",
        "env": "prod",
        "service": "backend",
        "state": InstanceState.RUNNING if healthy else InstanceState.UNHEALTHY,
        "healthy": healthy,
        "restarts": 0,
        "generation": 2,
    }
    return InstanceStatus(**{**values, **more})


def node(name: str = "web1", *instances: InstanceStatus, **more: Any) -> NodeStatus:
    """A droplet's report, written `NOW`."""
    values: dict[str, Any] = {
        "droplet": name,
        "address": "10.0.0.1",
        "incarnation": 1,
        "size": "s-1vcpu-1gb",
        "roles": (),
        "instances": instances,
        "updated_at": NOW,
    }
    return NodeStatus(**{**values, **more})


def card(name: str = "web1", **more: Any) -> NodeCard:
    """A droplet's card in the index (its report's address, incarnation and size)."""
    values: dict[str, Any] = {
        "droplet": name,
        "address": "10.0.0.1",
        "incarnation": 1,
        "size": "s-1vcpu-1gb",
    }
    return NodeCard(**{**values, **more})


def failure(droplet: str = "web1", **more: Any) -> FailureRecord:
    values: dict[str, Any] = {
        "droplet": droplet,
        "confirmed_by": ("master",),
        "confirmed_at": NOW,
        "state": FailureState.CONFIRMED,
        "fence": 0,
    }
    return FailureRecord(**{**values, **more})
