"""Allocations and failure records from KV to the mesh view, and what they give this droplet
to the reconciler: its allocations and the instances displaced to it.

A droplet that holds or may hold a role (`everything()`) reads every allocation. Another
reads only what concerns it (docs/scale.md): its entry in the index (`placed.<droplet>`,
written by the scheduler), the allocations it lists and those its failure records displace
to it, one watch per key, so that a publish of many projects costs it what it runs. Without
an entry (a mesh scheduled before the index, a droplet not placed yet) it reads them all.

What a partial view must not do: reach the reconciler before every allocation it reads has
arrived (a missing allocation stops its instances), nor a role (the builder's retention
deletes what no allocation names; backups and recovery read them all): a role taken leads
only once the view holds every allocation again (`MeshView.allocations_whole`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from meshd.agent.loops import ALL, ScopedMirror, mirror_bucket
from meshd.agent.meshview import MeshView
from meshd.agent.reconciler import Reconciler
from meshd.agent.store import Store
from protocol import subjects
from protocol.cards import PlacedKeys
from protocol.messages import Allocation, FailureRecord


class AllocationFeed:
    """`rescope` asks it to look at its scope again now (a role taken or left, trust
    changed); `reports` is told whenever the allocations change (rollout peers follow)."""

    def __init__(
        self,
        store: Store,
        view: MeshView,
        reconciler: Reconciler,
        me: str,
        everything: Callable[[], bool],
        reports: asyncio.Event,
    ) -> None:
        self.store = store
        self.view = view
        self.reconciler = reconciler
        self.me = me
        self.everything = everything
        self.reports = reports
        self._mirror = ScopedMirror(
            store, subjects.ALLOC_BUCKET, Allocation, self.scope, self._publish
        )
        self.rescope = self._mirror.rescope
        self._placed: tuple[str, ...] | None = None  # this droplet's entry; None: none
        self._placed_read = False

    def scope(self) -> frozenset[str]:
        if self.everything() or (self._placed_read and self._placed is None):
            return frozenset({ALL})
        if not self._placed_read:
            return frozenset()
        displaced = {
            key
            for record in self.view.failures.values()
            for key, droplet in record.displaced.items()
            if droplet == self.me
        }
        return frozenset(self._placed or ()) | displaced

    async def run(self) -> None:
        placed = subjects.placed_key(self.me)
        await asyncio.gather(
            self._mirror.run(),
            mirror_bucket(self.store, subjects.INDEX_BUCKET, PlacedKeys, self._index, placed),
            mirror_bucket(self.store, subjects.FAILURES_BUCKET, FailureRecord, self._failures),
        )

    async def _index(self, values: dict[str, PlacedKeys]) -> None:
        entry = values.get(subjects.placed_key(self.me))
        self._placed = entry.keys if entry else None
        self._placed_read = True
        self.rescope.set()

    async def _failures(self, values: dict[str, FailureRecord]) -> None:
        await self.view.set_failures(values)
        self.reconciler.set_peers(self.view.alive())
        self.rescope.set()  # what is displaced here may have changed
        self.reports.set()
        if self.view.knows_allocations:  # else an empty mirror would stop every instance
            await self.reconciler.apply(self.view.hosted())

    async def _publish(self, allocations: dict[str, Allocation], read: bool) -> None:
        complete = read and (self._placed_read or self._mirror.everything)
        whole = complete and self._mirror.everything
        await self.view.set_allocations(allocations, complete=complete, whole=whole)
        self.reports.set()
        if complete:
            await self.reconciler.apply(self.view.hosted())
