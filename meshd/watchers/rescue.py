"""A mesh of one or two droplets keeps JetStream on master alone: when master dies, its store
dies with it, and no failure record, lease or majority is left to recover it. The droplet after
master in ring order rebuilds it without the store, with the provider as the second opinion.

When no NATS server has been reachable for `RESCUE_AFTER_S` and the provider says master
is *off* (a master that is only cut off or paused is still *active*: nothing is done), master
is rebuilt from its newest snapshot, which holds its lone store as it was then (writes since
are lost; the quorum alert of `watchers/quorum.py` tells the operator meanwhile). Without a
snapshot there is nothing to rebuild the mesh's state from, and a master the provider no
longer has was destroyed on purpose: both are logged and left to the operator. Once the store
takes writes again the rebuild is recorded as `droplet_rebuilt` (`without_store`). A
one-droplet mesh has nobody left to do this: its heartbeat mails stop, the operator's alarm.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from meshd.agent.config import MeshConfig, ServerPlacement, user_data_now
from meshd.agent.records import snapshot_index
from meshd.agent.store import Store, StoreUnavailable
from meshd.core.monitors import ring
from meshd.core.spec import MASTER
from plugins.providers import (
    DropletNotFound,
    DropletStatus,
    Provider,
    ProviderError,
    Rebuilder,
    SnapshotNotFound,
    SnapshotRecord,
    Snapshotter,
)
from protocol.messages import Snapshot

log = logging.getLogger(__name__)
CHECK_S = 5.0
RESCUE_AFTER_S = 20.0
INDEX_EVERY_S = 30.0


def rescues(servers: Sequence[str], me: str, known: Iterable[str]) -> bool:
    """Whether `me` rebuilds a dead master: JetStream runs on master alone and `me` is the
    first of the other droplets it knows, in ring order."""
    if tuple(servers) != (MASTER,) or me == MASTER:
        return False
    return [name for name in ring({*known, me}) if name != MASTER][0] == me


def newest_snapshots(
    remembered: Sequence[Snapshot], kept: Sequence[SnapshotRecord]
) -> list[SnapshotRecord]:
    """master's snapshots the provider still keeps, newest first: those its index named when
    the store last answered, else (an agent restarted since) those named like master's."""
    by_id = {s.id: s for s in kept}
    named = [by_id[s.id] for s in remembered if s.id in by_id]
    if named:
        return named
    own = [s for s in kept if s.name.startswith(f"{MASTER}-deploy-")]
    return sorted(own, key=lambda s: s.created_at, reverse=True)


@dataclass
class Rebuilt:
    snapshot: str
    at: float


class MasterRescue:
    def __init__(
        self,
        droplet_dir: Path,
        config: MeshConfig,
        me: str,
        store: Callable[[], Store | None],
        known: Callable[[], Iterable[str]],
        provider: Provider,
        tag: str,
    ) -> None:
        self.dir = droplet_dir
        self.config = config
        self.me = me
        self.store = store
        self.known = known
        self.provider = provider
        self.tag = tag
        self.remembered: tuple[Snapshot, ...] = ()
        self.rebuilt: Rebuilt | None = None
        self._told = ""

    async def run(self) -> None:
        lost_since: float | None = None
        next_index = 0.0
        while True:
            store = self.store()
            now = time.monotonic()
            # The connection is enough: with JetStream on master alone, master's death leaves
            # no server to connect to (and asking JetStream would cost every agent a request).
            if store is not None and store.connected:
                lost_since, self._told = None, ""
                if self.rebuilt is not None:
                    await self._record(store, self.rebuilt)
                if now >= next_index:
                    next_index = now + INDEX_EVERY_S
                    await self._remember(store)
            else:
                lost_since = lost_since or now
                if now - lost_since >= RESCUE_AFTER_S and self.rebuilt is None:
                    placement = await asyncio.to_thread(ServerPlacement.load, self.dir, self.config)
                    if rescues(placement.names(), self.me, self.known()):
                        await self._rescue()
            await asyncio.sleep(CHECK_S)

    async def _remember(self, store: Store) -> None:
        try:
            index = (await snapshot_index(store, MASTER)).index
        except StoreUnavailable:
            return
        self.remembered = index.snapshots if index else ()

    async def _rescue(self) -> None:
        provider = self.provider
        try:
            master = next((d for d in await provider.list(self.tag) if d.name == MASTER), None)
            if master is None:
                self._tell("master is gone (destroyed); nothing to rebuild")
                return
            if master.status is not DropletStatus.OFF:
                self._tell(f"master does not answer but the provider says {master.status}")
                return
            if not isinstance(provider, Rebuilder) or not isinstance(provider, Snapshotter):
                self._tell("the provider cannot rebuild droplets from snapshots")
                return
            # The servers as this droplet last knew them: the snapshot's may be older.
            user_data = await asyncio.to_thread(user_data_now, self.dir, self.config)
            for snapshot in newest_snapshots(self.remembered, await provider.list_snapshots()):
                log.warning(
                    "master is off and JetStream was on it alone: rebuilding it. snapshot=%s",
                    snapshot.name,
                )
                try:
                    await provider.rebuild(
                        master.id, fence=None, snapshot_id=snapshot.id, user_data=user_data
                    )
                except SnapshotNotFound:
                    continue
                self.rebuilt = Rebuilt(snapshot.name, time.time())
                return
            self._tell("master is off and has no snapshot to rebuild it from")
        except DropletNotFound:
            self._tell("master was replaced meanwhile")
        except ProviderError as err:
            self._tell(f"the provider failed: {err}")

    async def _record(self, store: Store, rebuilt: Rebuilt) -> None:
        """Record the rebuild once the store takes it (JetStream may still be starting)."""
        detail = {
            "from": rebuilt.snapshot,
            "without_store": True,
            "back_after_s": round(time.time() - rebuilt.at, 1),
        }
        try:
            await store.record("droplet_rebuilt", self.me, MASTER, detail)
        except (StoreUnavailable, TimeoutError):
            return
        log.info("master rebuilt without the store is back. snapshot=%s", rebuilt.snapshot)
        self.rebuilt = None

    def _tell(self, what: str) -> None:
        """Log a problem once, not every round."""
        if what != self._told:
            self._told = what
            log.error("Cannot rescue master. reason=%s", what)
