"""The `scheduler` role: desired state -> allocations in `mesh_alloc`.

`allocations_for` is the pure part (placement from `meshd.core.placement`, environment from
`meshd.core.envvars`); `Scheduler.lead` runs it whenever the desired state changes (and every
few seconds), writing only what changed and bumping the generation of what did.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import defaultdict
from collections.abc import Mapping
from typing import Any, TypeVar

from meshd.agent.key_mirror import KeyMirror
from meshd.agent.lease import Term
from meshd.agent.loops import run_on_changes
from meshd.agent.placed_index import index_placed
from meshd.agent.records import (
    ConfigLayers,
    ReleaseTargets,
    config_layers,
    decode_servers,
    jetstream_servers,
    last_placement,
    release_targets,
    restart_counts,
    write_over,
)
from meshd.agent.store import Conflict, Entry, Store
from meshd.core.envvars import (
    instance_environment,
    instance_hosts,
    operator_environment,
    with_config,
)
from meshd.core.errors import CapacityError
from meshd.core.jetstream import MASTER, candidates, choose
from meshd.core.placement import Placement, place
from meshd.core.registries import login_for
from meshd.core.releases import with_release
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
RESYNC_S = 10.0
SERVERS_RESYNC_S = 5.0  # the choice is also made as droplets join; this is the safety net
M = TypeVar("M", bound=Message)


def allocations_for(
    state: DesiredState,
    placement: Placement,
    previous: Mapping[str, Allocation],
    fence: int,
    restarts: Mapping[str, int] | None = None,
    config: ConfigLayers | None = None,
    targets: ReleaseTargets | None = None,
) -> dict[str, Allocation]:
    """One allocation per service; unchanged ones are returned as they were (same generation),
    changed ones with the next generation, but for a datastore's new backup schedule alone
    (written with the same generation: nothing restarts). `restarts` counts the restart
    requests of each allocation key: one more request is one more generation. `config` holds
    the operator's variables (`meshctl config`) of projects and environments, for all but
    datastores; `targets` the release each environment runs (its services' artifacts win)."""
    restarts = restarts or {}
    config = config or {}
    targets = targets or {}
    droplets: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for instance in placement.instances:
        droplets[instance.service_key].append(instance.droplet)
    env_resources = placement.resources_by_env()
    result: dict[str, Allocation] = {}
    for project in state.projects:
        for env in ("prod", "uat", "test"):
            placed = {s.name: droplets[(project.name, env, s.name)] for s in project.services}
            resources = env_resources[(project.name, env)]
            for service in project.services:
                key = subjects.alloc_key(project.name, env, service.name)
                backups = project.backups if service.kind.is_datastore else None
                login = login_for(project.registry, service.image)
                fresh = with_release(
                    Allocation(
                        project=project.name,
                        env=env,
                        service=service.name,
                        generation=1,
                        droplets=tuple(placed[service.name]),
                        port=resources.ports.get(service.name),
                        spare_port=resources.spare_ports.get(service.name),
                        restart=restarts.get(key, 0),
                        image=service.image,
                        command=service.command,
                        memory_mb=service.memory_mb,
                        env_vars=with_config(
                            instance_environment(
                                resources, service.name, service.kind, placed[service.name]
                            ),
                            operator_environment(
                                service.env,
                                {} if service.kind.is_datastore else config,
                                project.name,
                                env,
                            ),
                        ),
                        hosts=instance_hosts(placed),
                        health_path=service.health_path,
                        secrets=service.secrets,
                        fence=fence,
                        service_kind=service.kind.value,
                        process_command=service.process_command,
                        build_context=service.build_context,
                        dockerfile=service.dockerfile_path,
                        data_path=service.data_path,
                        build_secrets=service.build_secrets,
                        registry=login.server if login else None,
                        registry_user=login.username if login else None,
                        backup_every_s=backups.every_s if backups else None,
                        backup_keep_s=backups.keep_s if backups else None,
                    ),
                    targets.get((project.name, env)),
                )
                result[key] = _next(previous.get(key), fresh)
    return result


def _next(old: Allocation | None, fresh: Allocation) -> Allocation:
    """`fresh` as it is written: `old` itself when nothing changed; with `old`'s generation
    when only its backup schedule did (the `backups` leader's business: nothing restarts);
    else with the next generation."""
    if old is None:
        return fresh
    if _same(old, fresh, *_NO_RESTART):
        return old if _same(old, fresh) else dataclasses.replace(fresh, generation=old.generation)
    return dataclasses.replace(fresh, generation=old.generation + 1)


def _decoded(entry: Entry | None, kind: type[M]) -> M | None:
    if entry is None or entry.value is None:
        return None
    try:
        return decode(entry.value, kind)
    except ProtocolError as err:
        log.warning("Unreadable %s skipped. key=%s error=%s", kind.KIND, entry.key, err)
        return None


def _incarnation(value: bytes) -> int:
    """A droplet's life as its report tells it (0: the provisioner's "booting" or unreadable)."""
    try:
        return decode(value, NodeStatus).incarnation
    except ProtocolError:
        return 0


# What an allocation may change without a new generation (its instances restart with one).
_NO_RESTART = ("backup_every_s", "backup_keep_s")


def _same(a: Allocation, b: Allocation, *ignored: str) -> bool:
    """Equal but for the generation, the fence and the `ignored` fields."""
    blank: dict[str, Any] = {"generation": 0, "fence": 0, **dict.fromkeys(ignored)}
    return dataclasses.replace(a, **blank) == dataclasses.replace(b, **blank)


class Scheduler:
    role = subjects.Role.SCHEDULER

    def __init__(self, store: Store, droplet: str) -> None:
        self.store = store
        self.droplet = droplet
        # What a pass reads whole, followed while it leads (no read of every key per pass).
        self.allocations = KeyMirror(store, subjects.ALLOC_BUCKET)
        self.index = KeyMirror(store, subjects.INDEX_BUCKET)

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
            return
        try:
            state = DesiredState.from_data(decode(spec_entry.value, PublishedSpec).spec)
        except (ProtocolError, KeyError, TypeError, ValueError) as err:
            log.error("Desired state unreadable; keeping the last allocations. error=%s", err)
            await self.store.record(
                "schedule_refused", self.droplet, "spec", {"error": str(err)}, term.fence
            )
            return
        last = await last_placement(self.store)
        previous, scheduled_revision = (last.placement, last.spec_revision) if last else (None, 0)
        try:
            placement = place(state, previous)
        except CapacityError as err:
            await self.store.record(
                "schedule_refused", self.droplet, "spec", {"error": str(err)}, term.fence
            )
            return
        current = await self.allocations.entries()
        revisions = {key: entry.revision for key, entry in current.items()}
        existing = {key: found for key, e in current.items() if (found := _allocation(key, e))}
        restarts = await restart_counts(self.store)
        config = await config_layers(self.store)
        targets = await release_targets(self.store)
        wanted = allocations_for(state, placement, existing, term.fence, restarts, config, targets)
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
