"""Which droplets run the mesh's JetStream servers: `master` and up to two more, chosen from
the droplets the mesh has, so the mesh is exactly the CSV's droplets (docs/decisions.md).

One or two droplets: `master` alone, standalone (replicas 1); two JetStream servers would stop
on either's death. Three or more: `master` and two others, clustered (replicas 3). The choice is
sticky (a move pauses the control plane for seconds), prefers droplets that are rebuilt
rarely and have memory to spare, and never keeps a droplet that is about to be destroyed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from meshd.core.health import STALE_AFTER_S
from meshd.core.placement import Placement
from meshd.core.sizes import SIZES
from protocol.messages import NodeStatus

MASTER = "master"
CLUSTER_SIZE = 3
DRILL_PREFIX = "mesh-"  # droplets `meshctl up --droplets N` adds beside master; never destroyed


@dataclass(frozen=True, slots=True)
class Candidate:
    """What the choice knows of one droplet."""

    name: str
    memory_free_mb: int = 0  # its size's memory less what its instances reserve
    replaced: int = 0  # how often it was rebuilt (a failure, a resize)
    leaving: bool = False  # a publish destroys it


@dataclass(frozen=True, slots=True)
class Topology:
    """The JetStream servers of a mesh, `master` first, and the replicas of every stream."""

    servers: tuple[str, ...]

    @property
    def replicas(self) -> int:
        return CLUSTER_SIZE if len(self.servers) >= CLUSTER_SIZE else 1

    @property
    def clustered(self) -> bool:
        return len(self.servers) > 1


def choose(candidates: Iterable[Candidate], current: Sequence[str] = ()) -> Topology:
    """The servers for the mesh of `candidates`, keeping those of `current` that may stay."""
    staying = {c.name: c for c in candidates if not c.leaving}
    if MASTER not in staying:  # no mesh without master: keep what runs until it is back
        return Topology(tuple(current) or (MASTER,))
    if len(staying) < CLUSTER_SIZE:
        return Topology((MASTER,))
    kept = [name for name in current if name in staying and name != MASTER]
    others = sorted(
        (c for name, c in staying.items() if name != MASTER and name not in kept),
        key=lambda c: (c.replaced, -c.memory_free_mb, c.name),
    )
    chosen = [*kept, *(c.name for c in others)][: CLUSTER_SIZE - 1]
    return Topology((MASTER, *sorted(chosen)))


def candidates(
    nodes: Mapping[str, NodeStatus],
    placement: Placement | None,
    current: Collection[str],
    failed: Collection[str],
    now: float,
) -> list[Candidate]:
    """The droplets that may run JetStream, from what they report and the last placement:
    live ones whose agent has joined, and the current servers even while they are down (a
    failure is not a reason to move: the server is rebuilt and rejoins). A droplet the
    placement no longer has is leaving (a publish destroys it)."""
    wanted = {d.name for d in placement.droplets} if placement else None
    reserved: Counter[str] = Counter()
    for instance in placement.instances if placement else ():
        reserved[instance.droplet] += instance.memory_mb
    found = [  # a server whose report is not read stays one, unless it is leaving
        Candidate(name, leaving=wanted is not None and name not in wanted and not _kept(name))
        for name in current
        if name not in nodes
    ]
    for name, node in nodes.items():
        joined = node.incarnation > 0  # not the provisioner's "booting" report
        live = joined and name not in failed and now - node.updated_at < STALE_AFTER_S
        if not live and name not in current:
            continue
        size = SIZES.get(node.size)
        free = size.allocatable_mb - reserved[name] if size else 0
        leaving = wanted is not None and name not in wanted and not _kept(name)
        found.append(Candidate(name, free, max(0, node.incarnation - 1), leaving))
    return found


def _kept(name: str) -> bool:
    """master and the drill droplets of `up`: no publish destroys them."""
    return name == MASTER or name.startswith(DRILL_PREFIX)
