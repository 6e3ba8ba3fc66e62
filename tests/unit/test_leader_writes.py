"""Leaders write over what they read: a deposed leader's late write never lands over its
successor's (scheduler, snapshots, provisioner), and droplet creation neither orphans one
droplet when another fails nor creates a name twice. On the in-memory store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from meshd.agent.config import WEB_TAG, MeshConfig, mesh_tag
from meshd.agent.lease import Term
from meshd.agent.meshview import MeshView
from meshd.agent.records import last_placement, snapshot_index
from meshd.agent.store import Conflict
from meshd.roles.provisioner import Provisioner
from meshd.roles.scheduler import Scheduler
from meshd.roles.snapshots import Snapshots
from plugins.providers import (
    DropletRecord,
    DropletStatus,
    Fence,
    ProviderError,
    SnapshotRecord,
)
from protocol import subjects
from protocol.codec import decode, encode
from protocol.messages import Allocation, PublishedSpec, Snapshot, SnapshotIndex
from tests.support.memstore import MemoryStore
from tests.support.states import state_from_csv

pytestmark = pytest.mark.asyncio


def term(role: str, fence: int) -> Term:
    return Term(role, fence, time.monotonic() + 600)


async def publish(store: MemoryStore, csv: str) -> None:
    spec = PublishedSpec(
        spec=state_from_csv(csv).to_data(), published_by="test", published_at=time.time()
    )
    await store.put(subjects.DESIRED_BUCKET, subjects.DESIRED_KEY, encode(spec))


async def test_a_deposed_schedulers_late_write_does_not_land_over_its_successors() -> None:
    store = MemoryStore()
    await publish(store, "Project,Servers,MasterSpec,WebSpec\nshop,1,s-2vcpu-4gb,s-1vcpu-1gb\n")
    await Scheduler(store, "master").schedule(term("scheduler", 1))
    key = subjects.alloc_key("shop", "prod", "backend")
    first = decode(store.value(subjects.ALLOC_BUCKET, key) or b"", Allocation)

    # A new spec: the old leader computes, and while its writes are on their way the new
    # leader (a higher fence) schedules the same spec and writes first.
    await publish(store, "Project,Servers,MasterSpec,WebSpec\nshop,2,s-2vcpu-4gb,s-1vcpu-1gb\n")
    successor = Scheduler(store, "mesh-2")
    interleaved = False

    async def successor_first(bucket: str, written: str) -> None:
        nonlocal interleaved
        if bucket == subjects.ALLOC_BUCKET and not interleaved:
            interleaved = True
            await successor.schedule(term("scheduler", 9))

    store.before_write(successor_first)
    with pytest.raises(Conflict):
        await Scheduler(store, "master").schedule(term("scheduler", 1))

    landed = decode(store.value(subjects.ALLOC_BUCKET, key) or b"", Allocation)
    assert landed.fence == 9  # the successor's, not overwritten by the deposed leader
    assert landed.generation == first.generation + 1  # one new generation, not two
    placement = await last_placement(store)
    assert placement is not None and "shop-web1" in {d.name for d in placement.placement.droplets}


async def test_a_scheduler_pass_that_loses_a_write_is_abandoned_and_said_so() -> None:
    store = MemoryStore()
    await publish(store, "Project,Servers,MasterSpec,WebSpec\nshop,1,s-2vcpu-4gb,s-1vcpu-1gb\n")
    scheduler = Scheduler(store, "master")

    written: set[str] = set()

    async def somebody_else(bucket: str, key: str) -> None:
        if bucket == subjects.ALLOC_BUCKET and key not in written:
            written.add(key)
            await store.put(bucket, key, b"written by another leader")

    store.before_write(somebody_else)
    await scheduler._schedule_or_abandon(term("scheduler", 3))  # noqa: SLF001
    await asyncio.sleep(0)  # the event is recorded in the background
    assert [e.name for e in store.events] == ["schedule_abandoned"]


async def test_a_snapshot_index_written_meanwhile_by_another_leader_is_not_overwritten() -> None:
    store = MemoryStore()
    index = SnapshotIndex(droplet="web1", snapshots=())
    await store.put(subjects.SNAPSHOTS_BUCKET, "web1", encode(index))
    read = await snapshot_index(store, "web1")
    newer = SnapshotIndex(
        droplet="web1",
        snapshots=(
            Snapshot(id="9", name="web1-deploy-9", droplet_id="3", created_at=9.0,
                     generations={}, fence=9),
        ),
    )  # fmt: skip
    await store.put(subjects.SNAPSHOTS_BUCKET, "web1", encode(newer))  # the successor's

    provider = FakeProvider()
    role = Snapshots(store, provider, MeshView(), "master", "tag")
    role._indexes["web1"] = read  # noqa: SLF001 - what the deposed leader read before
    with pytest.raises(Conflict):
        await role._write(term("snapshots", 1), index, read.revision)  # noqa: SLF001
    assert decode(store.value(subjects.SNAPSHOTS_BUCKET, "web1") or b"", SnapshotIndex) == newer


@dataclass
class FakeProvider:
    """A provider whose creates take a while, and fail for the names in `failing`."""

    name: str = "fake"
    resize_powers_off: bool = False
    failing: set[str] = field(default_factory=set)
    droplets: dict[str, DropletRecord] = field(default_factory=dict)
    creates: list[str] = field(default_factory=list)  # names, when a create finished

    async def create(
        self, name: str, size: str, *, tags: Sequence[str], user_data: str, fence: Fence | None
    ) -> DropletRecord:
        if name in self.failing:
            raise ProviderError(f"create droplet {name!r}", "the region is full")
        await asyncio.sleep(0.05)
        if any(d.name == name for d in self.droplets.values()):
            raise ProviderError(f"create droplet {name!r}", "a second droplet of this name")
        record = DropletRecord(
            str(len(self.droplets) + 1), name, size, "10.0.0.9", DropletStatus.ACTIVE,
            tuple(tags), time.time(),
        )  # fmt: skip
        self.droplets[record.id] = record
        self.creates.append(name)
        return record

    async def list(self, tag: str | None = None) -> list[DropletRecord]:
        return [d for d in self.droplets.values() if tag is None or tag in d.tags]

    async def snapshot(self, droplet_id: str, name: str, *, fence: Fence | None) -> SnapshotRecord:
        return SnapshotRecord("s1", name, droplet_id, time.time(), 0.1)


async def test_one_failed_create_neither_orphans_the_others_nor_repeats_them() -> None:
    store = MemoryStore()
    await publish(store, "Project,Servers,MasterSpec,WebSpec\nshop,3,s-2vcpu-4gb,s-1vcpu-1gb\n")
    await Scheduler(store, "master").schedule(term("scheduler", 1))
    master = DropletRecord(
        "1", "master", "s-2vcpu-4gb", "10.0.0.2", DropletStatus.ACTIVE, (mesh_tag("m"),), 0.0
    )
    provider = FakeProvider(failing={"shop-web1"}, droplets={"1": master})
    config = MeshConfig(mesh="m", core=(), passwords={})
    provisioner = Provisioner(store, provider, config, "master")  # type: ignore[arg-type]

    await provisioner.provision(term("provisioner", 2))

    # shop-web2 was created to the end although shop-web1 failed beside it, not left running
    # on its own after the pass returned.
    assert provider.creates == ["shop-web2"]
    failed = [e for e in store.events if e.name == "provision_failed"]
    assert [(e.subject, e.detail["error"]) for e in failed] == [
        ("shop-web1", "create droplet 'shop-web1': the region is full")
    ]

    provider.failing.clear()
    await provisioner.provision(term("provisioner", 2))  # the next pass
    assert sorted(provider.creates) == ["shop-web1", "shop-web2"]  # each name once
    made = [d for d in provider.droplets.values() if d.name != "master"]
    assert all(mesh_tag("m") in d.tags and WEB_TAG in d.tags for d in made)
