"""The `snapshots` role: a snapshot of every droplet after each deployment it finished, the last
three kept (seed: "post_deployment_snapshots", keep_last_3_per_droplet).

A droplet has *settled* when every allocation it is given runs there healthy at its current
generation and nothing else of those services is left (no rollout under way). A settled droplet
whose generations differ from those of its newest snapshot (or that has none yet, even with
nothing to run), and stayed so for `SETTLE_S`, is snapshotted; the snapshot is recorded in
`mesh_snapshots/<droplet>` (newest first) and the ones past the third are deleted. Recovery
rebuilds a failed droplet from the newest one (`meshd.roles.recovery`). When a droplet is due
and what is pruned is decided in `meshd.core.snapshot_policy`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time

from meshd.agent.lease import Term, TermEnded
from meshd.agent.meshview import MeshView
from meshd.agent.records import IndexRead, snapshot_index, write_over
from meshd.agent.store import Conflict, Store, StoreUnavailable
from meshd.core.health import STALE_AFTER_S
from meshd.core.snapshot_policy import KEEP, due, pruned, retry_after, settled, snapshot_name
from plugins.providers import (
    DropletRecord,
    Provider,
    ProviderError,
    SnapshotNotFound,
    SnapshotRecord,
    Snapshotter,
)
from protocol import subjects
from protocol.codec import encode
from protocol.messages import Snapshot, SnapshotIndex

log = logging.getLogger(__name__)
SETTLE_S = 3.0  # a droplet's generations must hold this long before it is snapshotted
CHECK_S = 1.0
# Droplets snapshotted side by side: a snapshot takes minutes (DigitalOcean: about 90 s a GB),
# and one droplet after another kept the last of a new mesh's unprotected for a quarter hour.
AT_ONCE = 4


class Snapshots:
    role = subjects.Role.SNAPSHOTS

    def __init__(
        self, store: Store, provider: Provider, view: MeshView, droplet: str, tag: str
    ) -> None:
        self.store = store
        self.provider = provider
        self.view = view
        self.droplet = droplet
        self.tag = tag
        self._seen: dict[str, tuple[dict[str, int], float]] = {}  # generations, since (monotonic)
        # droplet -> when a snapshot may be tried again (monotonic), and how many failed in a row
        self._failed: dict[str, tuple[float, int]] = {}
        self._indexes: dict[str, IndexRead] = {}  # as last read or written, with its revision
        self._taking: dict[str, asyncio.Task[None]] = {}  # droplet -> its snapshot under way

    async def lead(self, term: Term) -> None:
        if not isinstance(self.provider, Snapshotter):
            log.warning("The provider takes no snapshots. provider=%s", self.provider.name)
            await asyncio.Event().wait()
        self._seen.clear()
        self._indexes.clear()
        try:
            while True:
                try:
                    await self.check(term)
                except StoreUnavailable as err:
                    log.info("Snapshot check interrupted. error=%s", err)
                await asyncio.sleep(CHECK_S)
        finally:  # the term is over: no snapshot of this leader's goes on
            taking = list(self._taking.values())
            for task in taking:
                task.cancel()
            await asyncio.gather(*taking, return_exceptions=True)
            self._taking.clear()

    async def check(self, term: Term) -> None:
        if not self.view.ready:
            return
        now = time.monotonic()
        droplets: dict[str, DropletRecord] | None = None
        for name, node in sorted(self.view.nodes.items()):
            generations = None
            if name not in self.view.failures and time.time() - node.updated_at < STALE_AFTER_S:
                generations = settled(name, self.view.allocations, node)
            if generations is None:
                self._seen.pop(name, None)
                continue
            seen = self._seen.get(name)
            if seen is None or seen[0] != generations:
                self._seen[name] = (generations, now)
                continue
            if now - seen[1] < SETTLE_S or now < self._failed.get(name, (0.0, 0))[0]:
                continue
            if name in self._taking or len(self._taking) >= AT_ONCE:
                continue
            if name not in self._indexes:
                self._indexes[name] = await snapshot_index(self.store, name)
            if not due(generations, self._indexes[name].index):
                continue
            if droplets is None:
                droplets = {d.name: d for d in await self.provider.list(self.tag)}
            found = droplets.get(name)
            if found is not None:
                self._taking[name] = asyncio.create_task(self._attempt(term, found, generations))

    async def _attempt(
        self, term: Term, droplet: DropletRecord, generations: dict[str, int]
    ) -> None:
        """One snapshot of `droplet`, beside those of other droplets; a failure is tried
        again later, with backoff."""
        name = droplet.name
        try:
            await self._take(term, droplet, generations)
            self._failed.pop(name, None)
        except ProviderError as err:
            failures = self._failed.get(name, (0.0, 0))[1] + 1
            self._failed[name] = (time.monotonic() + retry_after(failures), failures)
            log.error("Snapshot failed. droplet=%s error=%s", name, err)
            self.store.record_soon(
                "snapshot_failed", self.droplet, name, {"error": str(err)}, term.fence
            )
        except StoreUnavailable as err:  # taken and not written down: the next pass records it
            log.info("Snapshot not recorded yet. droplet=%s error=%s", name, err)
        except Conflict as err:  # an index written by somebody else: read it again
            log.warning("Snapshot index changed meanwhile; reading it again. error=%s", err)
            self._indexes.pop(name, None)
        except TermEnded as err:  # the leader that runs this pass ends it too
            log.info("Snapshot stopped: the term is over. droplet=%s reason=%s", name, err)
        finally:
            self._taking.pop(name, None)

    async def _take(self, term: Term, droplet: DropletRecord, generations: dict[str, int]) -> None:
        assert isinstance(self.provider, Snapshotter)
        term.ensure_held()
        started = time.monotonic()
        record = await self._unrecorded(term, droplet)
        if record is None:
            name = snapshot_name(droplet.name, time.time())
            record = await self.provider.snapshot(droplet.id, name, fence=term.token)
        taken = Snapshot(
            id=record.id,
            name=record.name,
            droplet_id=droplet.id,
            created_at=record.created_at,
            generations=generations,
            fence=term.fence,
            releases={
                key: found.release
                for key in generations
                if (found := self.view.allocations.get(key)) is not None and found.release
            },
        )
        previous = self._indexes.get(droplet.name) or IndexRead(None, 0)
        index = SnapshotIndex(
            droplet=droplet.name,
            snapshots=(taken, *(previous.index.snapshots if previous.index else ())),
        )
        await self._write(term, index, previous.revision)
        log.info("Droplet snapshotted. droplet=%s snapshot=%s", droplet.name, record.name)
        self.store.record_soon(
            "snapshot_taken",
            self.droplet,
            droplet.name,
            {
                "snapshot": record.name,
                "snapshot_id": record.id,
                "took_s": round(time.monotonic() - started, 2),
                "size_gb": record.size_gb,
            },
            term.fence,
        )
        await self._prune(term, index)

    async def _unrecorded(self, term: Term, droplet: DropletRecord) -> SnapshotRecord | None:
        """A snapshot of the droplet that a pass took but could not write down (the store did
        not answer then): recorded now instead of taking another. Older ones of that kind are
        deleted, so that no snapshot is left that the index does not know (each is billed)."""
        assert isinstance(self.provider, Snapshotter)
        index = self._indexes.get(droplet.name)
        listed = index.index.snapshots if index and index.index else ()
        newest = listed[0].created_at if listed else 0.0
        prefix = snapshot_name(droplet.name, 0).rsplit("-", 2)[0] + "-"  # "<droplet>-deploy-"
        orphans = sorted(
            (
                r
                for r in await self.provider.list_snapshots()
                if r.droplet_id == droplet.id
                and r.name.startswith(prefix)
                and r.id not in {s.id for s in listed}
                and r.created_at >= newest
            ),
            key=lambda r: r.created_at,
        )
        for stale in orphans[:-1]:
            term.ensure_held()
            with contextlib.suppress(SnapshotNotFound):
                await self.provider.delete_snapshot(stale.id, fence=term.token)
        return orphans[-1] if orphans else None

    async def _prune(self, term: Term, index: SnapshotIndex) -> None:
        assert isinstance(self.provider, Snapshotter)
        old = pruned(index)
        if not old:
            return
        for snapshot in old:
            term.ensure_held()
            # Gone already: deleted by a leader that died before it wrote the index down.
            with contextlib.suppress(SnapshotNotFound):
                await self.provider.delete_snapshot(snapshot.id, fence=term.token)
            self.store.record_soon(
                "snapshot_deleted",
                self.droplet,
                index.droplet,
                {"snapshot": snapshot.name, "snapshot_id": snapshot.id},
                term.fence,
            )
        kept = dataclasses.replace(index, snapshots=index.snapshots[:KEEP])
        await self._write(term, kept, self._indexes[index.droplet].revision)

    async def _write(self, term: Term, index: SnapshotIndex, last: int) -> None:
        """The index written over the revision last read or written (`Conflict` otherwise)."""
        term.ensure_held()
        key = subjects.snapshot_key(index.droplet)
        revision = await write_over(self.store, subjects.SNAPSHOTS_BUCKET, key, encode(index), last)
        self._indexes[index.droplet] = IndexRead(index, revision)
