"""The `recovery` role: brings back a droplet whose failure was confirmed (docs/architecture.md).

Each failure record is a resumable state machine; every step is idempotent and is written back
(compare-and-set on the record's revision, with the leader's fence) before the next, so a
leader that dies midway is replaced by one that carries on without repeating finished steps:

    confirmed  -> fence: the provider powers the droplet off (local: its processes and
                  containers are killed), so a half-dead droplet cannot come back serving,
                  and only then detaches its volumes (its datastores' data)
    fenced     -> displace: its web services and workers are given to survivors with room
                  (`meshd.core.displacement`); every agent starts what the record gives it
    displaced  -> rebuild: a new droplet with the same name, address and user data from the
                  newest snapshot (`meshd.roles.snapshots`; else the base image, and the mesh
                  deploys onto it), the volumes attached to it; it joins with a new
                  incarnation and starts its datastores on them
    recovering -> the replacement reports every instance allocated to it healthy: the record
                  is removed (the droplet is monitored again, displaced instances drain and
                  stop on the survivors) and `droplet_recovered` recorded

A droplet the provider no longer has and the placement no longer wants (scaled in) is not
rebuilt: its report and record are removed and `droplet_forgotten` recorded.

The load balancer drops the droplet's instances as soon as the record exists.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from bootstrap import BootstrapFailed
from meshd.agent.lease import Term
from meshd.agent.loops import run_on_changes
from meshd.agent.membership import forget_droplet
from meshd.agent.meshview import MeshView
from meshd.agent.metrics import RECOVERY_STEP_SECONDS
from meshd.agent.records import last_placement, snapshot_index
from meshd.agent.store import Conflict, Store
from meshd.core.displacement import displace, not_displaced
from plugins.providers import (
    DropletNotFound,
    DropletRecord,
    Provider,
    ProviderError,
    Rebuilder,
    SnapshotNotFound,
    VolumeRecord,
    Volumes,
)
from protocol import subjects
from protocol.codec import decode, encode
from protocol.errors import ProtocolError
from protocol.messages import FailureRecord, FailureState

log = logging.getLogger(__name__)
VOLUME_ACTIONS = 5  # volume actions under way at once: the API's rate budget is shared
RESYNC_S = 1.0


class Recovery:
    role = subjects.Role.RECOVERY

    def __init__(
        self,
        store: Store,
        provider: Provider,
        view: MeshView,
        droplet: str,
        tag: str,
        user_data: Callable[[], str] | None = None,
        bootstrapper: Callable[[DropletRecord, str], Awaitable[object]] | None = None,
    ) -> None:
        """`user_data` makes a replacement's user data when it is rebuilt: the JetStream
        servers this agent uses now, which a snapshot's own may predate (None: the old
        droplet's). `bootstrapper` writes it over SSH where the provider cannot
        (DigitalOcean keeps a droplet's first user data)."""
        self.store = store
        self.provider = provider
        self.view = view
        self.droplet = droplet
        self.tag = tag
        self.user_data = user_data
        self.bootstrapper = bootstrapper
        self._reported: dict[str, str] = {}  # droplet -> last problem recorded
        self._volume_actions = asyncio.Semaphore(VOLUME_ACTIONS)

    async def lead(self, term: Term) -> None:
        await run_on_changes(
            self.store,
            [(subjects.FAILURES_BUCKET, ">"), (subjects.NODES_BUCKET, ">")],
            lambda: self.recover(term),
            RESYNC_S,
        )

    async def recover(self, term: Term) -> None:
        # The records' names come from the agent's mirror and each is read by key: listing the
        # bucket would need a new consumer, which waits for a JetStream meta leader that may
        # have died with the very droplet to recover.
        for name in sorted(self.view.failures):
            if name == self.droplet:
                continue  # never its own: the agent hands the role over (`Trust.may_recover`)
            key = subjects.failure_key(name)
            entry = await self.store.get(subjects.FAILURES_BUCKET, key)
            if entry is None or entry.value is None:
                continue
            try:
                record = decode(entry.value, FailureRecord)
            except ProtocolError as err:
                log.error("Failure record unreadable; skipped. key=%s error=%s", key, err)
                continue
            try:
                await self.step(term, record, entry.revision)
            except ProviderError as err:
                await self._problem(term, record, str(err))
            except Conflict:
                log.info("Failure record changed meanwhile. droplet=%s", record.droplet)

    async def step(self, term: Term, record: FailureRecord, revision: int) -> None:
        """Take the record's next step, if it is due."""
        if record.state is FailureState.CONFIRMED:
            await self._fence(term, record, revision)
        elif record.state is FailureState.FENCED:
            await self._displace(term, record, revision)
        elif record.state is FailureState.DISPLACED:
            await self._rebuild(term, record, revision)
        elif record.state is FailureState.RECOVERING:
            await self._check_back(term, record, revision)

    async def _fence(self, term: Term, record: FailureRecord, revision: int) -> None:
        found = await self._find(record.droplet)
        if found is not None:
            term.ensure_held()
            try:
                await self.provider.power_off(found.id, fence=term.token)
            except DropletNotFound:
                found = None
        detached = await self._detach_volumes(term, record, found.id) if found else ()
        fenced = dataclasses.replace(
            record,
            droplet_id=found.id if found else None,
            volumes=tuple(sorted({*record.volumes, *detached})),
        )
        await self._advance(term, fenced, revision, FailureState.FENCED, "droplet_fenced")

    async def _detach_volumes(
        self, term: Term, record: FailureRecord, droplet_id: str
    ) -> list[str]:
        """Detach what the fenced droplet had attached: it can no longer write to it. All at
        once: each is an action of its own that takes a while (DigitalOcean: 10 s or more)."""
        if not isinstance(self.provider, Volumes):
            return []
        provider = self.provider
        mine = [v for v in await provider.list_volumes() if v.droplet_id == droplet_id]

        async def detach(volume: VolumeRecord) -> None:
            async with self._volume_actions:
                term.ensure_held()
                await provider.detach_volume(volume.id, fence=term.token)
            detail = {"volume": volume.id, "droplet_id": droplet_id}
            self.store.record_soon("volume_detached", self.droplet, volume.name, detail, term.fence)

        _raise_first(await asyncio.gather(*(detach(v) for v in mine), return_exceptions=True))
        return [volume.id for volume in mine]

    async def _attach_volumes(
        self, term: Term, record: FailureRecord, replacement: DropletRecord
    ) -> None:
        """Attach the fenced droplet's volumes to its replacement before its datastores start
        (its agent would attach them too, but waits for nothing this way); all at once."""
        if not isinstance(self.provider, Volumes) or not record.volumes:
            return
        provider = self.provider
        names = {v.id: v.name for v in await provider.list_volumes()}

        async def attach(volume_id: str) -> None:
            async with self._volume_actions:
                term.ensure_held()
                await provider.attach_volume(volume_id, replacement.id, fence=term.token)
            detail = {"volume": volume_id, "droplet_id": replacement.id}
            self.store.record_soon(
                "volume_attached", self.droplet, names[volume_id], detail, term.fence
            )

        # A volume deleted meanwhile has nothing to carry over.
        done = await asyncio.gather(
            *(attach(v) for v in record.volumes if v in names), return_exceptions=True
        )
        _raise_first(done)

    async def _displace(self, term: Term, record: FailureRecord, revision: int) -> None:
        if not self.view.ready:
            return  # a new leader whose mirrors are still filling: the next pass displaces
        allocations = self.view.allocations
        others = {name: r for name, r in self.view.failures.items() if name != record.droplet}
        plan = displace(record.droplet, allocations, self.view.nodes, others)
        displaced = dataclasses.replace(record, displaced=plan)
        staying = not_displaced(record.droplet, allocations, plan)
        extra = {"displaced": plan, "staying_down": staying}
        await self._advance(
            term, displaced, revision, FailureState.DISPLACED, "instances_displaced", extra
        )

    async def _rebuild(self, term: Term, record: FailureRecord, revision: int) -> None:
        if not isinstance(self.provider, Rebuilder):
            await self._problem(term, record, "the provider cannot rebuild droplets")
            return
        found = await self._find(record.droplet)
        if found is not None and found.id != record.droplet_id:
            # Rebuilt by a leader that died before writing it down.
            replacement, source = found, "an earlier leader's rebuild"
        elif found is not None:
            replacement, source = await self._rebuild_from_snapshot(term, found.id, record)
        elif await self._unwanted(record.droplet):
            await self._forget(term, record, revision)
            return
        else:
            await self._problem(term, record, "the droplet is gone; nothing to rebuild from")
            return
        await self._attach_volumes(term, record, replacement)
        if self.bootstrapper is not None and self.user_data is not None:
            term.ensure_held()
            try:
                await self.bootstrapper(replacement, await asyncio.to_thread(self.user_data))
            except BootstrapFailed as err:
                await self._problem(term, record, f"bootstrap failed: {err.reason} ({err.step})")
                return
        rebuilt = dataclasses.replace(record, replacement_id=replacement.id)
        await self._advance(
            term, rebuilt, revision, FailureState.RECOVERING, "droplet_rebuilt", {"from": source}
        )

    async def _rebuild_from_snapshot(
        self, term: Term, droplet_id: str, record: FailureRecord
    ) -> tuple[DropletRecord, str]:
        """Rebuild from the newest snapshot the provider still has, else from the base image
        (the mesh deploys everything onto it). The replacement and what it was built from."""
        assert isinstance(self.provider, Rebuilder)
        index = (await snapshot_index(self.store, record.droplet)).index
        user_data = await asyncio.to_thread(self.user_data) if self.user_data else None
        for snapshot in index.snapshots if index else ():
            term.ensure_held()
            try:
                built = await self.provider.rebuild(
                    droplet_id, fence=term.token, snapshot_id=snapshot.id, user_data=user_data
                )
            except SnapshotNotFound:
                log.warning("Snapshot gone. droplet=%s snapshot=%s", record.droplet, snapshot.name)
                continue
            return built, snapshot.name
        term.ensure_held()
        built = await self.provider.rebuild(droplet_id, fence=term.token, user_data=user_data)
        return built, "base image"

    async def _check_back(self, term: Term, record: FailureRecord, revision: int) -> None:
        node = self.view.nodes.get(record.droplet)
        if node is None or node.incarnation <= record.incarnation:
            return  # the replacement has not reported yet
        allocated = [a for a in self.view.allocations.values() if record.droplet in a.droplets]
        healthy = {
            (i.project, i.env, i.service) for i in node.instances if i.healthy and not i.draining
        }
        if any((a.project, a.env, a.service) not in healthy for a in allocated):
            return
        term.ensure_held()
        await self.store.delete(
            subjects.FAILURES_BUCKET, subjects.failure_key(record.droplet), last=revision
        )
        took = round(time.time() - record.confirmed_at, 1)
        log.info("Droplet recovered. droplet=%s took_s=%s", record.droplet, took)
        self.store.record_soon(
            "droplet_recovered",
            self.droplet,
            record.droplet,
            {"since_confirmed_s": took, "incarnation": node.incarnation},
            term.fence,
        )

    async def _advance(
        self,
        term: Term,
        record: FailureRecord,
        revision: int,
        state: FailureState,
        event: str,
        extra: dict[str, Any] | None = None,
    ) -> None:
        term.ensure_held()
        now = time.time()
        updated = dataclasses.replace(record, state=state, fence=term.fence, step_at=now)
        await self.store.update(
            subjects.FAILURES_BUCKET,
            subjects.failure_key(record.droplet),
            encode(updated),
            last=revision,
        )
        log.info("Recovery step. droplet=%s state=%s", record.droplet, state.value)
        RECOVERY_STEP_SECONDS.labels(state.value).observe(
            now - (record.step_at or record.confirmed_at)
        )
        ids = {"droplet_id": record.droplet_id, "replacement_id": record.replacement_id}
        detail: dict[str, Any] = {k: v for k, v in ids.items() if v is not None} | (extra or {})
        self.store.record_soon(event, self.droplet, record.droplet, detail, term.fence)
        self._reported.pop(record.droplet, None)

    async def _unwanted(self, name: str) -> bool:
        """The placement no longer has the droplet (scaled in): nothing is owed to it."""
        last = await last_placement(self.store)
        return last is not None and name not in {d.name for d in last.placement.droplets}

    async def _forget(self, term: Term, record: FailureRecord, revision: int) -> None:
        """A droplet destroyed by scale-in whose last report landed after the provisioner
        deleted it (its agent's socket still held it): the mesh would show it dead for ever.
        Its report and card go first, then the record (a record without a report is never shown)."""
        term.ensure_held()
        await forget_droplet(self.store, record.droplet)
        await self.store.delete(
            subjects.FAILURES_BUCKET, subjects.failure_key(record.droplet), last=revision
        )
        log.info("Droplet gone and no longer placed; forgotten. droplet=%s", record.droplet)
        self.store.record_soon("droplet_forgotten", self.droplet, record.droplet,
                               {"reason": "scaled in"}, term.fence)  # fmt: skip
        self._reported.pop(record.droplet, None)

    async def _find(self, name: str) -> DropletRecord | None:
        for found in await self.provider.list(self.tag):
            if found.name == name:
                return found
        return None

    async def _problem(self, term: Term, record: FailureRecord, reason: str) -> None:
        if self._reported.get(record.droplet) == reason:
            return
        self._reported[record.droplet] = reason
        log.error("Recovery step failed. droplet=%s error=%s", record.droplet, reason)
        detail = {"error": reason, "step": record.state.value, "incarnation": record.incarnation}
        self.store.record_soon("recovery_failed", self.droplet, record.droplet, detail, term.fence)


def _raise_first(outcomes: Sequence[object]) -> None:
    """Every action ran to its end (none cancelled mid-way); the first failure is raised."""
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
