"""A droplet's presence in the mesh: heartbeats on `mesh.hb.<droplet>` every second and its
observed state in KV `mesh_nodes/<droplet>`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

from meshd.meshconfig import DropletIdentity
from meshd.reconciler import Reconciler
from meshd.store import Store, StoreUnavailable
from protocol import subjects
from protocol.codec import encode
from protocol.messages import Heartbeat, NodeStatus

log = logging.getLogger(__name__)
HEARTBEAT_EVERY_S = 1.0
STATUS_EVERY_S = 5.0  # and whenever it changes


def next_incarnation(data_dir: Path) -> int:
    """Each start of the agent is a new incarnation (a refutation outranks older suspicions)."""
    path = data_dir / "incarnation"
    current = int(path.read_text()) if path.exists() else 0
    path.write_text(str(current + 1))
    return current + 1


def node_status(
    identity: DropletIdentity, incarnation: int, roles: tuple[str, ...], reconciler: Reconciler
) -> NodeStatus:
    return NodeStatus(
        droplet=identity.name,
        address=identity.address,
        incarnation=incarnation,
        size=identity.size,
        roles=roles,
        instances=reconciler.statuses(),
        updated_at=time.time(),
    )


class Membership:
    def __init__(
        self, store: Store, identity: DropletIdentity, status: Callable[[], NodeStatus]
    ) -> None:
        self.store = store
        self.identity = identity
        self.status = status

    async def run(self) -> None:
        seq = 0
        last_sent: tuple[object, ...] | None = None
        last_put = 0.0
        subject = subjects.heartbeat(self.identity.name)
        while True:
            seq += 1
            status = self.status()
            beat = Heartbeat(
                droplet=status.droplet, incarnation=status.incarnation, seq=seq, sent_at=time.time()
            )
            await self.store.publish(subject, encode(beat))
            fingerprint = (status.roles, status.instances)
            now = time.monotonic()
            if fingerprint != last_sent or now - last_put >= STATUS_EVERY_S:
                try:
                    await self.store.put(
                        subjects.NODES_BUCKET, subjects.node_key(status.droplet), encode(status)
                    )
                    last_sent, last_put = fingerprint, now
                except StoreUnavailable as err:
                    log.debug("Status not written. error=%s", err)
            await asyncio.sleep(HEARTBEAT_EVERY_S)
