"""What the mesh's KV buckets tell this droplet's agent, fed to its mesh view and its
reconciler as they change: allocations and failure records, what droplets report, the
desired state, the detection holds and the secrets sealed to this droplet."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from meshd.agent.loops import mirror_bucket
from meshd.agent.meshview import MeshView
from meshd.agent.reconciler import Reconciler
from meshd.agent.sealed import SealedSecrets
from meshd.agent.store import Store
from protocol import subjects
from protocol.messages import Allocation, DetectionHold, FailureRecord, NodeStatus, PublishedSpec
from protocol.secrets import SealedSecret


async def feed_allocations(store: Store, reconciler: Reconciler, view: MeshView) -> None:
    """Allocations and failure records from KV to the mesh view, and what they give this
    droplet to the reconciler: its allocations and the instances displaced to it."""

    async def allocations(values: dict[str, Allocation]) -> None:
        await view.set_allocations(values)
        await reconciler.apply(view.hosted())

    async def failures(values: dict[str, FailureRecord]) -> None:
        await view.set_failures(values)
        reconciler.set_peers(view.alive())
        if view.knows_allocations:  # else an empty mirror would stop every instance
            await reconciler.apply(view.hosted())

    await asyncio.gather(
        mirror_bucket(store, subjects.ALLOC_BUCKET, Allocation, allocations),
        mirror_bucket(store, subjects.FAILURES_BUCKET, FailureRecord, failures),
    )


async def feed_nodes(store: Store, reconciler: Reconciler, view: MeshView) -> None:
    """What droplets report, from `mesh_nodes` to the mesh view and the reconciler: their
    addresses (host variables) and, of those without a failure record, instances (rollouts
    take turns; a dead droplet's last report would hold a turn)."""

    async def publish(nodes: dict[str, NodeStatus]) -> None:
        await view.set_nodes(nodes)
        reconciler.set_peers(view.alive())
        await reconciler.set_addresses({name: n.address for name, n in nodes.items()})

    await mirror_bucket(store, subjects.NODES_BUCKET, NodeStatus, publish)


def mirrors(
    store: Store, view: MeshView, secrets: SealedSecrets, droplet: str
) -> dict[str, Coroutine[Any, Any, None]]:
    """The desired state and the holds into the view, the droplet's sealed secrets and its
    holder entry of the mesh key into `secrets`: a task each, by name."""
    desired, sealed = subjects.DESIRED_BUCKET, subjects.SECRETS_BUCKET
    return {
        "desired": mirror_bucket(
            store, desired, PublishedSpec, view.set_desired, subjects.DESIRED_KEY
        ),
        "holds": mirror_bucket(store, desired, DetectionHold, view.set_holds, subjects.HOLDS),
        "sealed-secrets": mirror_bucket(
            store, sealed, SealedSecret, secrets.set_sealed, subjects.sealed_of(droplet)
        ),
        "mesh-key-holder": mirror_bucket(
            store, sealed, SealedSecret, secrets.set_holder, subjects.holder_key(droplet)
        ),
    }
