"""Who watches whom (docs/failure-detection.md): pure.

Each droplet is watched by M = min(3, N-1) monitors: `master` (unless it is the target) and
then the droplets that follow the target in the ring of names (master first, then name order),
as the seed has master watch everyone and each web droplet watch the next. Beyond
`MASTER_WATCHES_UP_TO` droplets master is a target's monitor only as its ring successor, as
any other droplet: a monitor then watches three targets whatever the mesh's size (master
would receive 2N beats a second: docs/scale.md). A failure is confirmed when a majority of a
target's monitors confirm it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from meshd.core.spec import MASTER

MAX_MONITORS = 3
MASTER_WATCHES_UP_TO = 10  # droplets; the seed's meshes, where master watches everyone


def monitored(incarnations: Mapping[str, int], failed: Collection[str]) -> list[str]:
    """The droplets that are watched: they booted (reported an incarnation) and have no
    confirmed failure. `incarnations` maps every known droplet to its last incarnation."""
    return [name for name, life in incarnations.items() if life > 0 and name not in failed]


def ring(members: Iterable[str]) -> list[str]:
    """Members in ring order: master first, then by name."""
    return sorted(set(members), key=lambda name: (name != MASTER, name))


def monitor_map(members: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Every member's monitors."""
    order = ring(members)
    count = min(MAX_MONITORS, len(order) - 1)
    master_watches = MASTER in order and len(order) <= MASTER_WATCHES_UP_TO
    result: dict[str, tuple[str, ...]] = {}
    for index, target in enumerate(order):
        chosen: list[str] = []
        if target != MASTER and master_watches:
            chosen.append(MASTER)
        step = 1
        while len(chosen) < count:
            candidate = order[(index + step) % len(order)]
            step += 1
            if candidate != target and candidate not in chosen:
                chosen.append(candidate)
        result[target] = tuple(chosen)
    return result


def targets_of(monitor: str, monitors: Mapping[str, tuple[str, ...]]) -> list[str]:
    """The members `monitor` watches."""
    return sorted(target for target, chosen in monitors.items() if monitor in chosen)


def majority(monitor_count: int) -> int:
    """Confirmations a failure needs: more than half of the target's monitors."""
    return monitor_count // 2 + 1
