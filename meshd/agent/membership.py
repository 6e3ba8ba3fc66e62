"""A droplet's presence in the mesh: heartbeats on `mesh.hb.<droplet>` twice a second (its
monitors' evidence of life, beside their probes), its card in the compact index
`mesh_index/<droplet>` (address, incarnation, size: what every agent reads) and its observed
state in KV `mesh_nodes/<droplet>` (what role holders and rollout peers read), each written
when it changes. Liveness is the failure detector's (beats, probes, a majority's failure
record); the report's age only tells of a droplet nobody watches (a mesh of one) or one held
off the detection, so it is refreshed once a minute."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path

from meshd.agent.config import DropletIdentity
from meshd.agent.store import Conflict, Store, StoreUnavailable
from protocol import subjects
from protocol.cards import NodeCard
from protocol.codec import encode
from protocol.messages import InstanceStatus, LivenessBeat, NodeStatus

log = logging.getLogger(__name__)
BEAT_EVERY_S = 0.5
STATUS_REFRESH_S = 60.0  # unchanged, the status is written again after this (see `report`)
STATUS_MIN_GAP_S = 0.2
STATUS_CHECK_S = 2.0  # looked at this often without a signal (a resize, a role, a refusal)


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
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.beat(), name="beats")
            tasks.create_task(self.report(), name="status")

    async def beat(self) -> None:
        """A beat every `BEAT_EVERY_S`, on its own clock: a status write never delays one."""
        subject = subjects.beats(self.identity.name)
        seq = 0
        incarnation = self.status().incarnation  # this life's: it never changes
        next_beat = time.monotonic()
        while True:
            seq += 1
            beat = LivenessBeat(
                droplet=self.identity.name,
                incarnation=incarnation,
                seq=seq,
                sent_at=time.time(),
            )
            await self.store.publish(subject, encode(beat))
            next_beat = max(next_beat + BEAT_EVERY_S, time.monotonic())
            await asyncio.sleep(next_beat - time.monotonic())

    async def report(self) -> None:
        """The status whenever what it says changed (signalled by `changed`, else seen within
        `STATUS_CHECK_S`; at most every `STATUS_MIN_GAP_S`), and every `STATUS_REFRESH_S`
        while nothing does: at rest a droplet writes once a minute, and the agents that mirror
        `mesh_nodes` decode nothing in between."""
        last_sent: NodeStatus | None = None
        last_put = -STATUS_REFRESH_S
        last_card: NodeCard | None = None
        while True:
            self.changed.clear()  # before reading: a change from now on wakes the next round
            status = self.status()
            content = dataclasses.replace(status, updated_at=0.0)
            refresh = time.monotonic() - last_put >= STATUS_REFRESH_S
            card = card_of(status)
            if card != last_card or (refresh and not await self._card_stored(card)):
                last_card = await self._put_card(card)
            if content != last_sent or refresh:
                try:
                    await self.store.put(
                        subjects.NODES_BUCKET, subjects.node_key(status.droplet), encode(status)
                    )
                    last_sent, last_put = content, time.monotonic()
                    if self.published is not None:
                        self.published(status)
                except StoreUnavailable as err:
                    log.debug("Status not written. error=%s", err)
            wait = min(STATUS_CHECK_S, last_put + STATUS_REFRESH_S - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), wait)
            await asyncio.sleep(STATUS_MIN_GAP_S)

    async def _card_stored(self, card: NodeCard) -> bool:
        """The card is in the index as written: a read, which no watcher receives (a state
        that was lost, a master rebuilt without its store, must get it back)."""
        try:
            entry = await self.store.get(subjects.INDEX_BUCKET, subjects.node_key(card.droplet))
        except StoreUnavailable:
            return True  # asked again at the next refresh
        return entry is not None and entry.value == encode(card)

    async def _put_card(self, card: NodeCard) -> NodeCard | None:
        """The card written (it goes before the report: a droplet is known by its card), or
        None to try again next round."""
        try:
            await self.store.put(
                subjects.INDEX_BUCKET, subjects.node_key(card.droplet), encode(card)
            )
        except StoreUnavailable as err:
            log.debug("Card not written. error=%s", err)
            return None
        return card


def card_of(status: NodeStatus) -> NodeCard:
    return NodeCard(
        droplet=status.droplet,
        address=status.address,
        incarnation=status.incarnation,
        size=status.size,
    )


async def forget_droplet(store: Store, droplet: str) -> None:
    """Remove a droplet's report and card, each only as last read: a droplet of the same name
    made since by a newer leader writes its own, which a late delete must not remove."""
    key = subjects.node_key(droplet)
    for bucket in (subjects.NODES_BUCKET, subjects.INDEX_BUCKET):
        if (entry := await store.get(bucket, key)) is not None:
            with contextlib.suppress(Conflict):
                await store.delete(bucket, key, last=entry.revision)
