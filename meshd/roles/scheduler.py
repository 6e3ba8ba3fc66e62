"""The `scheduler` role: desired state -> allocations in `mesh_alloc`.

The pure part is `meshd.core.placement` and `meshd.core.allocations`; `Scheduler.lead` runs
it whenever the desired state changes (and every few seconds), writing only what changed and
bumping the generation of what did, then the index of what names each droplet.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import TypeVar

from meshd.agent.key_mirror import KeyMirror
from meshd.agent.lease import Term
from meshd.agent.loops import run_on_changes
from meshd.agent.placed_index import index_placed
from meshd.agent.records import (
    config_layers,
    decode_servers,
    jetstream_servers,
    last_placement,
    release_targets,
    restart_counts,
    write_over,
)
from meshd.agent.store import Conflict, Entry, Store
from meshd.core.allocations import EnvMemo, allocations_for
from meshd.core.errors import CapacityError
from meshd.core.jetstream import MASTER, candidates, choose
from meshd.core.placement import Placement, place
from meshd.core.spec import DesiredState
from protocol import subjects
from protocol.base import Message
from protocol.codec import decode, encode
from protocol.errors import ProtocolError
from protocol.messages import (
    Allocation,
    JetStreamServers,
    NodeStatus,
    PlacementRecord,
    PublishedSpec,
    ServerAddress,
)

log = logging.getLogger(__name__)
# A pass runs on every change of what it reads (cards appearing or going included); this is
# the safety net, and a pass that finds nothing changed costs comparisons, no building.
RESYNC_S = 30.0
SERVERS_RESYNC_S = 5.0  # the choice is also made as droplets join; this is the safety net
M = TypeVar("M", bound=Message)


def _decoded(entry: Entry | None, kind: type[M]) -> M | None:
    if entry is None or entry.value is None:
        return None
    try:
        return decode(entry.value, kind)
    except ProtocolError as err:
        log.warning("Unreadable %s skipped. key=%s error=%s", kind.KIND, entry.key, err)
        return None


def _present(_: bytes) -> bool:
    """A card's mere presence: a droplet that joins or goes, not its every change."""
    return True


def _incarnation(value: bytes) -> int:
    """A droplet's life as its report tells it (0: the provisioner's "booting" or unreadable)."""
    try:
        return decode(value, NodeStatus).incarnation
    except ProtocolError:
        return 0


class Scheduler:
    role = subjects.Role.SCHEDULER

    def __init__(self, store: Store, droplet: str) -> None:
        self.store = store
        self.droplet = droplet
        # What a pass reads whole, followed while it leads (no read of every key per pass).
        self.allocations = KeyMirror(store, subjects.ALLOC_BUCKET)
        self.index = KeyMirror(store, subjects.INDEX_BUCKET)
        self.memo: EnvMemo = {}  # each environment's last inputs and allocations
        self._desired: tuple[int, DesiredState] | None = None  # by the spec's revision
        self._placed: tuple[DesiredState, Placement | None, Placement] | None = None
        self._decoded: dict[str, tuple[int, Allocation | None]] = {}  # by key: revision, value

    async def lead(self, term: Term) -> None:
        await asyncio.gather(
            self.allocations.run(),
            self.index.run(),
            run_on_changes(
                self.store,
                [
                    (subjects.DESIRED_BUCKET, subjects.DESIRED_KEY),
                    (subjects.DESIRED_BUCKET, subjects.RESTARTS),
                    (subjects.DESIRED_BUCKET, subjects.CONFIG_VARS),
                    (subjects.DESIRED_BUCKET, subjects.RELEASE_TARGETS),
                ],
                lambda: self._schedule_or_abandon(term),
                RESYNC_S,
                when=[(subjects.INDEX_BUCKET, subjects.CARDS, _present)],  # each has an entry
            ),
            # When a droplet joins, leaves or starts a new life, not on every node report
            # (each droplet rewrites its own every few seconds, and a pass reads them all).
            run_on_changes(
                self.store,
                [
                    (subjects.DESIRED_BUCKET, subjects.PLACEMENT_KEY),
                    (subjects.FAILURES_BUCKET, ">"),
                ],
                lambda: self._choose_servers_or_abandon(term),
                SERVERS_RESYNC_S,
                when=[(subjects.NODES_BUCKET, ">", _incarnation)],
            ),
        )

    async def _choose_servers_or_abandon(self, term: Term) -> None:
        try:
            await self.choose_servers(term)
        except Conflict as err:
            log.warning("JetStream servers changed meanwhile; choice abandoned. error=%s", err)

    async def choose_servers(self, term: Term) -> None:
        """Which droplets run JetStream (`meshd.core.jetstream`), written to
        `mesh_desired/jetstream` with the next epoch when it changes; master's agent then
        moves the state (`meshd.agent.servers`)."""
        nodes = {
            name: node
            for name, entry in (await self.store.entries(subjects.NODES_BUCKET)).items()
            if (node := _decoded(entry, NodeStatus))
        }
        failed = set(await self.store.entries(subjects.FAILURES_BUCKET))
        last = await last_placement(self.store)
        entry = await self.store.get(subjects.DESIRED_BUCKET, subjects.JETSTREAM_KEY)
        chosen = decode_servers(entry.value if entry else None)
        applied = await jetstream_servers(self.store, subjects.JETSTREAM_APPLIED_KEY)
        # A move that failed fell back to other servers (master alone) at the same epoch:
        # what runs then is the place to choose from, not the choice that did not happen.
        current = applied if applied and (not chosen or applied.epoch >= chosen.epoch) else chosen
        names = tuple(s.name for s in current.servers) if current else (MASTER,)
        found = candidates(nodes, last.placement if last else None, names, failed, time.time())
        topology = choose(found, names)
        if topology.servers == names or any(n not in nodes for n in topology.servers):
            return
        record = JetStreamServers(
            epoch=max(chosen.epoch if chosen else 0, current.epoch if current else 0) + 1,
            servers=tuple(
                ServerAddress(name=n, address=nodes[n].address) for n in topology.servers
            ),
            fence=term.fence,
        )
        term.ensure_held()
        await write_over(
            self.store,
            subjects.DESIRED_BUCKET,
            subjects.JETSTREAM_KEY,
            encode(record),
            entry.revision if entry else None,
        )
        detail = {"servers": list(topology.servers), "replicas": topology.replicas}
        log.info("JetStream servers chosen. epoch=%d servers=%s", record.epoch, detail["servers"])
        await self.store.record(
            "jetstream_chosen",
            self.droplet,
            "jetstream",
            {**detail, "epoch": record.epoch},
            term.fence,
        )

    async def _schedule_or_abandon(self, term: Term) -> None:
        try:
            await self.schedule(term)
        except Conflict as err:
            log.warning("Allocations changed meanwhile; pass abandoned. error=%s", err)
            self.store.record_soon(
                "schedule_abandoned", self.droplet, "allocations", {"error": str(err)}, term.fence
            )

    async def schedule(self, term: Term) -> None:
        spec_entry = await self.store.get(subjects.DESIRED_BUCKET, subjects.DESIRED_KEY)
        if spec_entry is None or spec_entry.value is None:
            # Nothing to place yet; the index still lists what exists (nothing, on a new
            # mesh), so that the first publish reaches only the droplets it concerns.
            existing = self._existing(await self.allocations.entries())
            await index_placed(self.store, term, existing, (), self.index)
            return
        try:
            state = self._state(spec_entry.revision, spec_entry.value)
        except (ProtocolError, KeyError, TypeError, ValueError) as err:
            log.error("Desired state unreadable; keeping the last allocations. error=%s", err)
            await self.store.record(
                "schedule_refused", self.droplet, "spec", {"error": str(err)}, term.fence
            )
            return
        last = await last_placement(self.store)
        previous, scheduled_revision = (last.placement, last.spec_revision) if last else (None, 0)
        try:
            placement = self._place(state, previous)
        except CapacityError as err:
            await self.store.record(
                "schedule_refused", self.droplet, "spec", {"error": str(err)}, term.fence
            )
            return
        current = await self.allocations.entries()
        revisions = {key: entry.revision for key, entry in current.items()}
        existing = self._existing(current)
        restarts = await restart_counts(self.store)
        config = await config_layers(self.store)
        targets = await release_targets(self.store)
        wanted = allocations_for(
            state, placement, existing, term.fence, restarts, config, targets, self.memo
        )
        written = await self._write(term, wanted, existing, revisions)
        removed = await self._remove(term, set(revisions) - set(wanted), revisions)
        droplets = [droplet.name for droplet in placement.droplets]
        indexed = await index_placed(self.store, term, wanted, droplets, self.index)
        # Written also when only the spec revision moved: `publish --wait` waits for it.
        if previous != placement or scheduled_revision != spec_entry.revision:
            record = PlacementRecord(
                placement=placement.to_data(),
                spec_revision=spec_entry.revision,
                fence=term.fence,
                written_at=time.time(),
            )
            term.ensure_held()
            await write_over(
                self.store,
                subjects.DESIRED_BUCKET,
                subjects.PLACEMENT_KEY,
                encode(record),
                last.revision if last else None,
            )
        if written or removed or indexed:
            log.info(
                "Scheduled. changed=%d removed=%d indexed=%d fence=%d",
                written,
                removed,
                indexed,
                term.fence,
            )
            await self.store.record(
                "scheduled",
                self.droplet,
                "allocations",
                {
                    "changed": written,
                    "removed": removed,
                    "indexed": indexed,
                    "spec_revision": spec_entry.revision,
                },
                term.fence,
            )

    def _state(self, revision: int, value: bytes) -> DesiredState:
        """The desired state of the spec at `revision`, decoded once per revision."""
        if self._desired is None or self._desired[0] != revision:
            self._desired = (revision, DesiredState.from_data(decode(value, PublishedSpec).spec))
        return self._desired[1]

    def _place(self, state: DesiredState, previous: Placement | None) -> Placement:
        """`place`, again only when the state or the last placement differ from last pass's."""
        if self._placed is None or self._placed[:2] != (state, previous):
            self._placed = (state, previous, place(state, previous))
        return self._placed[2]

    def _existing(self, current: Mapping[str, Entry]) -> dict[str, Allocation]:
        """The readable allocations of `current`, each decoded once per revision."""
        decoded = {
            key: known if (known := self._decoded.get(key)) and known[0] == entry.revision
            else (entry.revision, _allocation(key, entry))
            for key, entry in current.items()
        }  # fmt: skip
        self._decoded = decoded
        return {key: found for key, (_, found) in decoded.items() if found is not None}

    async def _write(
        self,
        term: Term,
        wanted: dict[str, Allocation],
        existing: dict[str, Allocation],
        revisions: dict[str, int],
    ) -> int:
        """Each changed allocation written over the revision this pass read (a `Conflict`:
        somebody wrote since, a newer leader maybe: the pass is abandoned)."""
        written = 0
        for key, allocation in wanted.items():
            if existing.get(key) == allocation:
                continue
            term.ensure_held()
            data = encode(allocation)
            revision = await write_over(
                self.store, subjects.ALLOC_BUCKET, key, data, revisions.get(key)
            )
            self.allocations.wrote(key, data, revision)
            written += 1
        return written

    async def _remove(self, term: Term, keys: set[str], revisions: dict[str, int]) -> int:
        for key in sorted(keys):
            term.ensure_held()
            await self.store.delete(subjects.ALLOC_BUCKET, key, last=revisions[key])
            self.allocations.deleted(key, revisions[key])
        return len(keys)


def _allocation(key: str, entry: Entry) -> Allocation | None:
    """The allocation of an entry; None (it is written anew) when it cannot be read."""
    if entry.value is None:
        return None
    try:
        return decode(entry.value, Allocation)
    except ProtocolError as err:
        log.error("Allocation unreadable; writing it anew. key=%s error=%s", key, err)
        return None
