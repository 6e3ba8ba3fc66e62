"""A droplet's presence in the mesh: heartbeats on `mesh.hb.<droplet>` twice a second (its
monitors' evidence of life, beside their probes) and its observed state in KV
`mesh_nodes/<droplet>`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

from meshd.agent.config import DropletIdentity
from meshd.agent.store import Store, StoreUnavailable
from protocol import subjects
from protocol.codec import encode
from protocol.messages import InstanceStatus, LivenessBeat, NodeStatus

log = logging.getLogger(__name__)
BEAT_EVERY_S = 0.5
STATUS_EVERY_S = 5.0  # and whenever it changes
STATUS_MIN_GAP_S = 0.2


def next_incarnation(data_dir: Path) -> int:
    """Each start of the agent is a new incarnation (a refutation outranks older suspicions).

    At least the Unix time in seconds: a droplet rebuilt from a snapshot, or from the base
    image, finds an older count (or none) on its disk, yet must outrank the life that failed,
    which began earlier. The count on disk keeps two starts within a second apart."""
    path = data_dir / "incarnation"
    current = int(path.read_text()) if path.exists() else 0
    incarnation = max(current + 1, int(time.time()))
    path.write_text(str(incarnation))
    return incarnation


def node_status(
    identity: DropletIdentity,
    incarnation: int,
    roles: tuple[str, ...],
    instances: tuple[InstanceStatus, ...],
    *,
    seal_key: str = "",
    env_secrets: tuple[str, ...] = (),
    tls_expires: float = 0.0,
) -> NodeStatus:
    return NodeStatus(
        droplet=identity.name,
        address=identity.address,
        incarnation=incarnation,
        size=identity.size,
        roles=roles,
        instances=instances,
        updated_at=time.time(),
        seal_key=seal_key,
        env_secrets=env_secrets,
        tls_expires=tls_expires,
    )


class Membership:
    def __init__(
        self,
        store: Store,
        identity: DropletIdentity,
        status: Callable[[], NodeStatus],
        changed: asyncio.Event,
        published: Callable[[NodeStatus], None] | None = None,
    ) -> None:
        self.store = store
        self.identity = identity
        self.status = status
        self.changed = changed  # set by whoever changes what `status()` reports
        self.published = published  # told of every status written

    async def run(self) -> None:
        """A heartbeat every `BEAT_EVERY_S`; the status whenever it changed (at most every
        `STATUS_MIN_GAP_S`) and every `STATUS_EVERY_S` regardless."""
        seq = 0
        last_sent: tuple[object, ...] | None = None
        last_put = 0.0
        next_beat = 0.0
        subject = subjects.beats(self.identity.name)
        while True:
            now = time.monotonic()
            status = self.status()
            if now >= next_beat:
                seq += 1
                beat = LivenessBeat(
                    droplet=status.droplet,
                    incarnation=status.incarnation,
                    seq=seq,
                    sent_at=time.time(),
                )
                await self.store.publish(subject, encode(beat))
                next_beat = now + BEAT_EVERY_S
            fingerprint = (status.roles, status.instances)
            if fingerprint != last_sent or now - last_put >= STATUS_EVERY_S:
                try:
                    await self.store.put(
                        subjects.NODES_BUCKET, subjects.node_key(status.droplet), encode(status)
                    )
                    last_sent, last_put = fingerprint, now
                    if self.published is not None:
                        self.published(status)
                except StoreUnavailable as err:
                    log.debug("Status not written. error=%s", err)
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), max(0.0, next_beat - time.monotonic()))
            await asyncio.sleep(STATUS_MIN_GAP_S)
