"""What every `meshctl` command that talks to a mesh shares: finding and reading it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from meshd.agent.store import Store, StoreUnavailable, open_store
from meshd.cli.context import Context
from meshd.core.status import mesh_status
from protocol import subjects
from protocol.codec import decode
from protocol.messages import Allocation, FailureRecord, Lease, NodeStatus, SnapshotIndex

CONNECT_TIMEOUT_S = 3.0  # the one-line "not reachable" error comes within ~3 s


async def connect(context: Context) -> Store:
    try:
        return await open_store(
            context.servers,
            context.user,
            context.password,
            name="meshctl",
            timeout=CONNECT_TIMEOUT_S,
        )
    except StoreUnavailable as err:
        raise StoreUnavailable(f"mesh {context.name!r} is not reachable") from err


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


async def read_mesh(store: Store) -> MeshReading:
    async def read(bucket: str, cls: Any) -> dict[str, Any]:
        return {
            key: decode(entry.value, cls)
            for key, entry in (await store.entries(bucket)).items()
            if entry.value is not None
        }

    return MeshReading(
        nodes=await read(subjects.NODES_BUCKET, NodeStatus),
        allocations=await read(subjects.ALLOC_BUCKET, Allocation),
        leases=await read(subjects.LEASES_BUCKET, Lease),
        failures=await read(subjects.FAILURES_BUCKET, FailureRecord),
        snapshots=await read(subjects.SNAPSHOTS_BUCKET, SnapshotIndex),
    )
