"""The difference between two placements: what a publish would create, move and destroy.

`make_plan(previous, new)` is pure; `previous` is None for a mesh that has nothing yet. The
JSON form (`Plan.to_json`) is a documented interface (docs/plan-json.md).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from meshd.core.placement import Instance, Placement
from meshd.core.resources import EnvResources


class DropletAction(StrEnum):
    CREATE = "create"
    RESIZE = "resize"
    DESTROY = "destroy"
    KEEP = "keep"


class InstanceAction(StrEnum):
    START = "start"
    MOVE = "move"
    RESTART = "restart"  # same droplet, but what it runs changed
    STOP = "stop"
    KEEP = "keep"


@dataclass(frozen=True, slots=True)
class DropletChange:
    name: str
    size: str
    action: DropletAction
    previous_size: str | None = None


@dataclass(frozen=True, slots=True)
class InstanceChange:
    project: str
    env: str
    service: str
    droplet: str
    port: int | None
    action: InstanceAction
    from_droplet: str | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    droplets: tuple[DropletChange, ...]
    instances: tuple[InstanceChange, ...]
    allocations: tuple[EnvResources, ...]
    monthly_usd: float
    previous_monthly_usd: float

    @property
    def changes(self) -> bool:
        return any(d.action is not DropletAction.KEEP for d in self.droplets) or any(
            i.action is not InstanceAction.KEEP for i in self.instances
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "droplets": [
                {"name": d.name, "size": d.size, "action": d.action.value}
                | ({"previous_size": d.previous_size} if d.previous_size else {})
                for d in self.droplets
            ],
            "instances": [
                {
                    "project": i.project,
                    "env": i.env,
                    "service": i.service,
                    "droplet": i.droplet,
                    "port": i.port,
                    "action": i.action.value,
                }
                | ({"from": i.from_droplet} if i.from_droplet else {})
                for i in self.instances
            ],
            "allocations": [
                {
                    "project": a.project,
                    "env": a.env,
                    "hash": a.hash,
                    "ports": dict(a.ports),
                    "db_name": a.db_name,
                    "db_user": a.db_user,
                }
                for a in self.allocations
            ],
            "cost": {
                "monthly_usd": round(self.monthly_usd, 2),
                "previous_monthly_usd": round(self.previous_monthly_usd, 2),
            },
        }


def make_plan(
    previous: Placement | None, new: Placement, existing: Mapping[str, str] | None = None
) -> Plan:
    """What changes from `previous` to `new`. `existing` (name -> size) names droplets that
    run without a placement of theirs (master, made by `meshctl up`): kept or resized, not
    created, and never destroyed here."""
    old_droplets = {d.name: d for d in previous.droplets} if previous else {}
    sizes = dict(existing or {}) | {name: d.size for name, d in old_droplets.items()}
    new_names = {d.name for d in new.droplets}
    droplets = [_droplet_change(d.name, d.size, sizes.get(d.name)) for d in new.droplets]
    droplets += [
        DropletChange(d.name, d.size, DropletAction.DESTROY)
        for d in old_droplets.values()
        if d.name not in new_names
    ]
    return Plan(
        droplets=tuple(droplets),
        instances=tuple(_instance_changes(previous.instances if previous else (), new.instances)),
        allocations=new.allocations,
        monthly_usd=new.monthly_usd,
        previous_monthly_usd=previous.monthly_usd if previous else 0.0,
    )


def _droplet_change(name: str, size: str, old_size: str | None) -> DropletChange:
    if old_size is None:
        return DropletChange(name, size, DropletAction.CREATE)
    if old_size != size:
        return DropletChange(name, size, DropletAction.RESIZE, previous_size=old_size)
    return DropletChange(name, size, DropletAction.KEEP)


def _instance_changes(old: tuple[Instance, ...], new: tuple[Instance, ...]) -> list[InstanceChange]:
    """Per service: kept droplets stay, a lost droplet paired with a gained one is a move,
    leftovers start or stop. Ordered as the new placement, stops last."""
    before: dict[tuple[str, str, str], dict[str, Instance]] = defaultdict(dict)
    for instance in old:
        before[instance.service_key][instance.droplet] = instance
    after: dict[tuple[str, str, str], dict[str, Instance]] = defaultdict(dict)
    for instance in new:
        after[instance.service_key][instance.droplet] = instance
    changes: list[InstanceChange] = []
    stops: list[InstanceChange] = []
    for key in dict.fromkeys([*after, *before]):
        was, now = before.get(key, {}), after.get(key, {})
        lost = [d for d in was if d not in now]
        for droplet, instance in now.items():
            if droplet in was:
                same = was[droplet].fingerprint == instance.fingerprint
                action = InstanceAction.KEEP if same else InstanceAction.RESTART
                changes.append(_change(instance, action))
            elif lost:
                changes.append(_change(instance, InstanceAction.MOVE, from_droplet=lost.pop(0)))
            else:
                changes.append(_change(instance, InstanceAction.START))
        stops += [_change(was[d], InstanceAction.STOP) for d in lost]
    return changes + stops


def _change(
    instance: Instance, action: InstanceAction, from_droplet: str | None = None
) -> InstanceChange:
    return InstanceChange(
        project=instance.project,
        env=instance.env,
        service=instance.service,
        droplet=instance.droplet,
        port=instance.port,
        action=action,
        from_droplet=from_droplet,
    )
