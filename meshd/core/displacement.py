"""Where a failed droplet's stateless instances run until its replacement is back (pure).

Recovery's third step (docs/failure-detection.md): the recovery leader picks, for every web
service and worker of the failed droplet, a surviving droplet that does not run it yet and has
the memory for it; the choice is written into the failure record (`FailureRecord.displaced`).
Every agent then adds those droplets to the allocations it runs (`hosted`), so the instances
start on the survivors without another write to `mesh_alloc`, keep their generation (nothing is
restarted) and go away by themselves when the record is removed: the instances move back.

Datastores and services with a data volume are never displaced: their data lives on the
failed droplet and comes back with it.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Mapping

from meshd.core.sizes import SIZES
from meshd.core.spec import ServiceKind
from protocol.messages import Allocation, FailureRecord, NodeStatus

STATELESS_KINDS = frozenset({ServiceKind.WEB.value, ServiceKind.WORKER.value})


def displaceable(allocation: Allocation) -> bool:
    return allocation.service_kind in STATELESS_KINDS and allocation.data_path is None


def hosted(
    allocations: Mapping[str, Allocation], failures: Mapping[str, FailureRecord]
) -> dict[str, Allocation]:
    """The allocations with the survivors that hold displaced instances added to their
    droplets (after the allocation's own); a survivor that failed itself is left out."""
    extra: defaultdict[str, list[str]] = defaultdict(list)
    for record in failures.values():
        for key, droplet in record.displaced.items():
            if droplet not in failures:
                extra[key].append(droplet)
    result = dict(allocations)
    for key, droplets in extra.items():
        allocation = allocations.get(key)
        if allocation is None:
            continue
        added = tuple(d for d in sorted(set(droplets)) if d not in allocation.droplets)
        if added:
            result[key] = dataclasses.replace(allocation, droplets=allocation.droplets + added)
    return result


def displace(
    failed: str,
    allocations: Mapping[str, Allocation],
    nodes: Mapping[str, NodeStatus],
    failures: Mapping[str, FailureRecord],
) -> dict[str, str]:
    """Allocation key -> surviving droplet for each stateless instance of `failed` that fits
    somewhere. Services that `failed` alone ran go first (nothing serves them now), then the
    others by key; each goes to the survivor with the most free memory (then by name).

    Survivors are the droplets that report (`nodes`) and have no failure record; their free
    memory is their size's allocatable memory minus what they are allocated and what other
    failures displaced to them."""
    down = set(failures) | {failed}
    current = hosted(allocations, {k: r for k, r in failures.items() if k != failed})
    free: dict[str, int] = {}
    for name, node in nodes.items():
        size = SIZES.get(node.size)
        if name in down or size is None:
            continue
        used = sum(a.memory_mb for a in current.values() if name in a.droplets)
        free[name] = size.allocatable_mb - used
    candidates = [
        (key, a)
        for key, a in sorted(allocations.items())
        if failed in a.droplets and displaceable(a)
    ]
    candidates.sort(key=lambda item: _still_served(item[1], down))
    plan: dict[str, str] = {}
    for key, allocation in candidates:
        room = [
            (-left, name)
            for name, left in free.items()
            if name not in current[key].droplets and left >= allocation.memory_mb
        ]
        if not room:
            continue
        target = min(room)[1]
        plan[key] = target
        free[target] -= allocation.memory_mb
    return plan


def not_displaced(
    failed: str, allocations: Mapping[str, Allocation], plan: Mapping[str, str]
) -> list[str]:
    """The failed droplet's instances that stay down until it is back: datastores, services
    with data, and stateless ones no survivor had room for."""
    return [
        key for key, a in sorted(allocations.items()) if failed in a.droplets and key not in plan
    ]


def _still_served(allocation: Allocation, down: set[str]) -> bool:
    return any(d not in down for d in allocation.droplets)
