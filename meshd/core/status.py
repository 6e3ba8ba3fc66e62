"""What the mesh looks like, from KV contents: the data behind `meshctl status` and
`publish --wait`. Pure: decoded messages in, plain data out (docs/status-json.md)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from meshd.core.displacement import hosted
from meshd.core.health import STALE_AFTER_S, healthy_servers, live_instances, serves
from meshd.core.monitors import monitor_map, monitored, targets_of
from protocol.messages import (
    Allocation,
    Event,
    FailureRecord,
    Lease,
    NodeStatus,
    SnapshotIndex,
)


def mesh_status(
    nodes: Mapping[str, NodeStatus],
    allocations: Mapping[str, Allocation],
    leases: Mapping[str, Lease],
    now: float,
    failures: Mapping[str, FailureRecord] | None = None,
    snapshots: Mapping[str, SnapshotIndex] | None = None,
) -> dict[str, Any]:
    failures = failures or {}
    snapshots = snapshots or {}
    roles: dict[str, list[str]] = {}
    for role, lease in sorted(leases.items()):
        roles.setdefault(lease.holder, []).append(role)
    # The detector's map: droplets that booted and have no confirmed failure.
    monitors = monitor_map(monitored({n: node.incarnation for n, node in nodes.items()}, failures))
    droplets = [
        {
            "name": node.droplet,
            "address": node.address,
            "size": node.size,
            "roles": roles.get(node.droplet, []),
            "healthy": now - node.updated_at < STALE_AFTER_S and node.droplet not in failures,
            "heartbeat_age_s": round(max(0.0, now - node.updated_at), 1),
            "incarnation": node.incarnation,
            "instances": len(node.instances),
            "monitors": targets_of(node.droplet, monitors),
            "monitored_by": list(monitors.get(node.droplet, ())),
            "failure": failures[node.droplet].state.value if node.droplet in failures else None,
            "snapshot": _newest(snapshots.get(node.droplet), now),
        }
        for node in sorted(nodes.values(), key=_droplet_order)
    ]
    alive = {name: node for name, node in nodes.items() if name not in failures}
    services = [
        service_status(allocation, alive, now)
        for allocation in sorted(hosted(allocations, failures).values(), key=_service_order)
    ]
    lb = leases.get("lb")
    return {
        "lb": lb.holder if lb else None,
        "droplets": droplets,
        "services": services,
        "failures": [
            {
                "droplet": f.droplet,
                "state": f.state.value,
                "confirmed_by": list(f.confirmed_by),
                "confirmed_at": f.confirmed_at,
                "age_s": round(max(0.0, now - f.confirmed_at), 1),
                "step_age_s": round(max(0.0, now - (f.step_at or f.confirmed_at)), 1),
                "incarnation": f.incarnation,
                "displaced": dict(f.displaced),
            }
            for f in sorted(failures.values(), key=lambda f: f.confirmed_at)
        ],
    }


def _newest(index: SnapshotIndex | None, now: float) -> dict[str, Any] | None:
    if index is None or not index.snapshots:
        return None
    newest = index.snapshots[0]
    return {
        "name": newest.name,
        "age_s": round(max(0.0, now - newest.created_at), 1),
        "kept": len(index.snapshots),
        "generations": dict(newest.generations),
    }


def service_status(
    allocation: Allocation, nodes: Mapping[str, NodeStatus], now: float
) -> dict[str, Any]:
    healthy = 0
    restarts = 0
    errors = []
    for node, instance in live_instances(allocation, nodes, now):
        restarts += instance.restarts
        if serves(instance, allocation):
            healthy += 1
        elif instance.last_error:
            errors.append(f"{node.droplet}: {instance.last_error}")
    return {
        "project": allocation.project,
        "env": allocation.env,
        "service": allocation.service,
        "port": allocation.port,
        "healthy": healthy,
        "desired": len(allocation.droplets),
        "droplets": list(allocation.droplets),
        "generation": allocation.generation,
        "upstream": (
            healthy_servers(allocation, nodes, now)
            if allocation.service_kind == "web" and allocation.port is not None
            else None
        ),
        "restarts": restarts,
        "errors": errors,
        "awaiting_deploy": awaiting_deploy(allocation),
    }


def awaiting_deploy(allocation: Allocation) -> bool:
    """Built from the project's repository and no release has given it an artifact yet: not
    started, and not waited for (docs/deploys.md)."""
    context = allocation.build_context
    return context is not None and not context.startswith("/") and allocation.artifact is None


SUSPICION_WINDOW_S = 60.0
ENDS_SUSPICION = frozenset({"suspicion_refuted", "failure_confirmed"})


def open_suspicions(events: Iterable[Event], now: float) -> list[dict[str, Any]]:
    """Droplets suspected within the last minute whose suspicion has not ended since (the
    droplet refuted it or the failure was confirmed), from the events."""
    found: dict[str, dict[str, Any]] = {}
    for event in sorted(events, key=lambda e: e.at):
        if event.name == "droplet_suspected" and now - event.at <= SUSPICION_WINDOW_S:
            entry = found.setdefault(event.subject, {"droplet": event.subject, "by": []})
            entry["since"] = entry.get("since", event.at)
            if event.actor not in entry["by"]:
                entry["by"].append(event.actor)
        elif event.name in ENDS_SUSPICION:
            found.pop(event.subject, None)
    return [
        {**s, "age_s": round(max(0.0, now - s["since"]), 1)}
        for s in sorted(found.values(), key=lambda s: s["since"])
    ]


def converged(status: Mapping[str, Any]) -> bool:
    """Every service as healthy as it wants, but those awaiting their first deploy."""
    return not unconverged(status)


def unconverged(status: Mapping[str, Any]) -> list[str]:
    """What keeps the mesh from having converged, one line per service (with its newest
    errors), for an operator whose wait ran out."""
    return [
        f"{s['project']} {s['env']} {s['service']}: {s['healthy']}/{s['desired']} healthy"
        + (f" ({'; '.join(s['errors'][:2])})" if s["errors"] else "")
        for s in status["services"]
        if s["healthy"] != s["desired"] and not s.get("awaiting_deploy")
    ]


def unresized(wanted: Mapping[str, str], status: Mapping[str, Any]) -> list[str]:
    """The droplets that report another size than the placement gives them (by name): a
    resize still to come or under way. A lone droplet is never waited for: where a resize
    powers the droplet off (DigitalOcean) only another droplet's agent resizes it."""
    if len(wanted) < 2:
        return []
    reported = {d["name"]: d["size"] for d in status["droplets"]}
    return [
        f"{name}: {reported[name]}, to become {size}"
        for name, size in sorted(wanted.items())
        if reported.get(name, size) != size
    ]


_ENV_ORDER = {"prod": 0, "uat": 1, "test": 2}


def _service_order(a: Allocation) -> tuple[str, int, str]:
    return (a.project, _ENV_ORDER.get(a.env, 9), a.service)


def _droplet_order(node: NodeStatus) -> tuple[int, str]:
    return (0 if node.droplet == "master" else 1, node.droplet)


def notifications(events: Iterable[Event], waiting: int | None) -> dict[str, Any]:
    """The notification queue for `status`: how many wait (None: unknown), the last delivery
    and the newest failure of each channel that has not delivered since, from the events."""
    last_sent: dict[str, Event] = {}
    failing: dict[str, Event] = {}
    for event in sorted(events, key=lambda e: e.at):
        if event.name == "notification_sent":
            last_sent[event.subject] = event
            failing.pop(event.subject, None)
        elif event.name == "notification_failed":
            failing[event.subject] = event
    return {
        "waiting": waiting,
        "last_sent": {
            channel: {"subject": e.detail.get("subject"), "at": e.at}
            for channel, e in sorted(last_sent.items())
        },
        "failing": {
            channel: {
                "error": e.detail.get("error"),
                "permanent": e.detail.get("permanent"),
                "at": e.at,
            }
            for channel, e in sorted(failing.items())
        },
    }
