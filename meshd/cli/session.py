"""What every `meshctl` command that talks to a mesh shares: finding and reading it."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import click

from meshd.agent.config import CLIENT_PORT, mesh_tag
from meshd.agent.records import LastPlacement, jetstream_servers
from meshd.agent.store import Store, StoreUnavailable, Unreachable, open_store
from meshd.cli.context import Context
from meshd.core.jetstream import candidates, choose
from meshd.core.spec import DesiredState
from meshd.core.status import mesh_status
from protocol import subjects
from protocol.codec import decode
from protocol.messages import (
    Allocation,
    DetectionHold,
    FailureRecord,
    Lease,
    NodeStatus,
    PublishedSpec,
    SnapshotIndex,
)

CONNECT_TIMEOUT_S = 3.0  # the one-line "not reachable" error comes within ~3 s
TUNNEL_RECONNECTS = 120  # a minute: a tunnel to a droplet that died opens again through another


async def connect(context: Context) -> Store:
    tunnel = None
    servers = context.servers
    if context.tunnel:
        from meshd.cli.tunnel import open_tunnel

        tunnel = await open_tunnel(context.tunnel, context.servers, partial(_public, context))
        servers = tunnel.urls
    try:
        store = await open_store(
            servers,
            context.user,
            context.password,
            name="meshctl",
            timeout=CONNECT_TIMEOUT_S,
            # Through a tunnel, a lost connection waits for the tunnel to open again.
            reconnects=TUNNEL_RECONNECTS if tunnel is not None else 1,
            trust=context.trust(),
        )
    except StoreUnavailable as err:
        if tunnel is not None:
            await tunnel.close()
        raise Unreachable(f"mesh {context.name!r} is not reachable") from err
    if tunnel is not None:
        store.closing.append(tunnel.close)
    await _follow_servers(store, context)
    return store


async def _public(context: Context) -> list[str]:
    """The public addresses of the mesh's droplets, from its provider: where else a tunnel
    can go when the context's droplet is down."""
    from meshd.cli.joining import open_provider  # which imports this module

    provider = open_provider(context.mesh, context.provider)
    try:
        found = await provider.list(mesh_tag(context.mesh))
    finally:
        await provider.close()
    return [r.public_address for r in found if r.public_address and r.status == "active"]


async def _follow_servers(store: Store, context: Context) -> None:
    """Remember the mesh's JetStream servers in the context as they move (a new server may
    be a droplet the context has never heard of, and master may be the one that is down)."""
    try:
        applied = await jetstream_servers(store, subjects.JETSTREAM_APPLIED_KEY)
    except StoreUnavailable:
        return
    if applied is None:
        return
    urls = [f"nats://{s.address}:{CLIENT_PORT}" for s in applied.servers]
    known = urls + [u for u in context.servers if u not in urls]
    if known != context.servers:
        dataclasses.replace(context, servers=known).save()


@dataclass(frozen=True, slots=True)
class MeshReading:
    nodes: dict[str, NodeStatus]
    allocations: dict[str, Allocation]
    leases: dict[str, Lease]
    failures: dict[str, FailureRecord]
    snapshots: dict[str, SnapshotIndex]

    def status(self) -> dict[str, Any]:
        return mesh_status(
            self.nodes, self.allocations, self.leases, time.time(), self.failures, self.snapshots
        )


async def _read(store: Store, bucket: str, cls: Any, keys: str = ">") -> dict[str, Any]:
    return {
        key: decode(entry.value, cls)
        for key, entry in (await store.entries(bucket, keys)).items()
        if entry.value is not None
    }


async def read_nodes(store: Store) -> dict[str, NodeStatus]:
    """What every droplet reports, by name."""
    return await _read(store, subjects.NODES_BUCKET, NodeStatus)


async def read_allocations(store: Store) -> dict[str, Allocation]:
    """Every allocation, by key."""
    return await _read(store, subjects.ALLOC_BUCKET, Allocation)


async def read_published(store: Store) -> DesiredState | None:
    """The desired state as last published, or None before the first publish."""
    entry = await store.get(subjects.DESIRED_BUCKET, subjects.DESIRED_KEY)
    if entry is None or entry.value is None:
        return None
    return DesiredState.from_data(decode(entry.value, PublishedSpec).spec)


async def check_project(store: Store, project: str) -> DesiredState:
    """The published state, if it has `project`; a UsageError naming the known ones if not."""
    state = await read_published(store)
    known = sorted(p.name for p in state.projects) if state else []
    if state is None or project not in known:
        raise click.UsageError(
            f"no project {project!r} is published; known: {', '.join(known) or 'none'}"
        )
    return state


async def read_holds(store: Store) -> dict[str, DetectionHold]:
    """The operator's detection holds that have not ended, by droplet (`meshctl hold`)."""
    now = time.time()
    found = await _read(store, subjects.DESIRED_BUCKET, DetectionHold, subjects.HOLDS)
    return {h.droplet: h for h in found.values() if h.holds(now)}


async def read_mesh(store: Store) -> MeshReading:
    return MeshReading(
        nodes=await read_nodes(store),
        allocations=await read_allocations(store),
        leases=await _read(store, subjects.LEASES_BUCKET, Lease),
        failures=await _read(store, subjects.FAILURES_BUCKET, FailureRecord),
        snapshots=await _read(store, subjects.SNAPSHOTS_BUCKET, SnapshotIndex),
    )


async def jetstream_view(store: Store) -> dict[str, Any]:
    """Which droplets run JetStream, the replicas of the streams, each stream's leader and the
    servers whose copy of it is current (a rebuilt server is missing there until it has
    caught up)."""
    from meshd.agent.store.jetstream import NatsStore
    from meshd.agent.store.moves import current_copies

    applied = await jetstream_servers(store, subjects.JETSTREAM_APPLIED_KEY)
    servers = [s.name for s in applied.servers] if applied else ["master"]
    epoch = applied.epoch if applied else 0
    streams: dict[str, dict[str, Any]] = {}
    if isinstance(store, NatsStore):
        moves = store.moves()
        for name in await moves.existing():
            info = await moves.info(name)
            cluster = info.get("cluster") or {}
            streams[name] = {
                "leader": cluster.get("leader"),
                "replicas": int(info["config"].get("num_replicas", 1)),
                "current": current_copies(cluster, servers),
            }
    replicas = min((s["replicas"] for s in streams.values()), default=1)
    return {"servers": servers, "epoch": epoch, "replicas": replicas, "streams": streams}


async def jetstream_settled(
    store: Store, reading: MeshReading, placed: LastPlacement | None
) -> bool:
    """JetStream runs where the scheduler's choice over these droplets puts it, and no move
    is pending."""
    target = await jetstream_servers(store, subjects.JETSTREAM_KEY)
    done = await jetstream_servers(store, subjects.JETSTREAM_APPLIED_KEY)
    if target is not None and (done is None or done.epoch < target.epoch):
        return False
    names = tuple(s.name for s in done.servers) if done else ("master",)
    found = candidates(
        reading.nodes,
        placed.placement if placed else None,
        names,
        set(reading.failures),
        time.time(),
    )
    return choose(found, names).servers == names
