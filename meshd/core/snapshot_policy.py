"""When a droplet is snapshotted and which snapshots are kept (seed: "post_deployment_snapshots",
keep_last_3_per_droplet). Pure; the `snapshots` role acts on it.

A droplet has *settled* when every allocation it is given runs there healthy at its current
generation and nothing else of those services is left (no rollout under way). A settled
droplet whose generations differ from those of its newest snapshot (or that has none yet, even
with nothing to run) is due; the snapshots past the third are pruned.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from protocol.messages import Allocation, NodeStatus, Snapshot, SnapshotIndex

KEEP = 3
RETRY_FIRST_S = 5.0  # after a snapshot failed: a copy that met a moving file, a busy API...
RETRY_CAP_S = 60.0  # ...doubling up to this while it keeps failing


def settled(
    droplet: str, allocations: Mapping[str, Allocation], node: NodeStatus
) -> dict[str, int] | None:
    """Allocation key -> generation of everything `droplet` runs, if it has settled (see the
    module docstring); None while it has not. A droplet with nothing to run has settled too:
    its snapshot still holds its JetStream store, which a rebuilt core droplet needs (a
    nats-server that comes back under its name with an empty store forgets what it voted
    and logged, and the stream it rejoins can go back in time)."""
    mine = {k: a for k, a in allocations.items() if droplet in a.droplets}
    for allocation in mine.values():
        service = (allocation.project, allocation.env, allocation.service)
        found = [i for i in node.instances if (i.project, i.env, i.service) == service]
        if len(found) != 1:
            return None
        (instance,) = found
        if not instance.healthy or instance.draining:
            return None
        if instance.generation != allocation.generation:
            return None
    return {key: a.generation for key, a in sorted(mine.items())}


def due(generations: Mapping[str, int], index: SnapshotIndex | None) -> bool:
    """Whether a droplet running `generations` needs a snapshot: its newest one ran others."""
    return index is None or not index.snapshots or index.snapshots[0].generations != generations


def pruned(index: SnapshotIndex, keep: int = KEEP) -> tuple[Snapshot, ...]:
    """The snapshots past the newest `keep`."""
    return index.snapshots[keep:]


def snapshot_name(droplet: str, at: float) -> str:
    """The seed's `<droplet>-deploy-<YYYYmmdd-HHMM>`, with seconds: two deploys a minute
    would collide."""
    return f"{droplet}-deploy-{datetime.fromtimestamp(at, UTC):%Y%m%d-%H%M%S}"


def retry_after(failures: int) -> float:
    """Seconds before a droplet whose last `failures` snapshots in a row failed is tried again:
    soon after one (most failures pass), less often while they go on (an API that refuses)."""
    return min(RETRY_FIRST_S * 2.0 ** max(failures - 1, 0), RETRY_CAP_S)
