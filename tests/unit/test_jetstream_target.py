"""The scheduler's choice of JetStream servers on the in-memory store: written with the next
epoch when a third droplet joins, unchanged while nothing changes, back to master alone when
the mesh shrinks, and never over a choice written meanwhile by another leader."""

from __future__ import annotations

import dataclasses
import time

import pytest

from meshd.agent.lease import Term
from meshd.agent.store import Conflict
from meshd.core.placement import Droplet, Placement
from meshd.roles.scheduler import Scheduler
from protocol import subjects
from protocol.codec import decode, encode
from protocol.messages import JetStreamServers, PlacementRecord
from tests.support.factories import node
from tests.support.memstore import MemoryStore


def term(fence: int) -> Term:
    return Term("scheduler", fence, time.monotonic() + 600)


ADDRESSES = {"master": "10.0.0.2", "web1": "10.0.0.3", "web2": "10.0.0.4"}


async def join(store: MemoryStore, *names: str) -> None:
    for name in names:
        report = node(name, address=ADDRESSES[name], updated_at=time.time())
        await store.put(subjects.NODES_BUCKET, name, encode(report))


async def place(store: MemoryStore, *names: str) -> None:
    placement = Placement(tuple(Droplet(n, "s-1vcpu-1gb") for n in names), (), ())
    record = PlacementRecord(
        placement=placement.to_data(), spec_revision=1, fence=1, written_at=time.time()
    )
    await store.put(subjects.DESIRED_BUCKET, subjects.PLACEMENT_KEY, encode(record))


def target(store: MemoryStore) -> JetStreamServers | None:
    value = store.value(subjects.DESIRED_BUCKET, subjects.JETSTREAM_KEY)
    return decode(value, JetStreamServers) if value else None


async def test_the_servers_follow_the_droplets_with_a_new_epoch_each_time() -> None:
    store = MemoryStore()
    scheduler = Scheduler(store, "master")
    await join(store, "master", "web1")
    await scheduler.choose_servers(term(3))
    assert target(store) is None  # master alone, as the mesh started

    await join(store, "web2")
    await scheduler.choose_servers(term(3))
    grown = target(store)
    assert grown is not None and grown.epoch == 1 and grown.fence == 3
    assert {s.name: s.address for s in grown.servers} == ADDRESSES
    assert [e.name for e in store.events] == ["jetstream_chosen"]
    assert store.events[0].detail["replicas"] == 3

    await scheduler.choose_servers(term(3))
    assert target(store) == grown  # nothing changed: nothing written

    stale = dataclasses.replace(node("web1"), updated_at=0.0)
    await store.put(subjects.NODES_BUCKET, "web1", encode(stale))
    await store.put(subjects.FAILURES_BUCKET, "web2", b"a failure being recovered")
    await scheduler.choose_servers(term(4))
    assert target(store) == grown  # silent or failed servers stay servers: they are rebuilt

    await store.delete(subjects.NODES_BUCKET, "web2")  # unread: still a server
    await scheduler.choose_servers(term(4))
    assert target(store) == grown
    await place(store, "master", "web1")  # a publish drops web2: it leaves
    await scheduler.choose_servers(term(4))
    shrunk = target(store)
    assert shrunk is not None and shrunk.epoch == 2
    assert [s.name for s in shrunk.servers] == ["master"]


async def test_a_choice_written_meanwhile_is_not_overwritten() -> None:
    store = MemoryStore()
    await join(store, "master", "web1", "web2")

    interleaved = False

    async def another_leader_first(bucket: str, key: str) -> None:
        nonlocal interleaved
        if key == subjects.JETSTREAM_KEY and not interleaved:
            interleaved = True
            await Scheduler(store, "web1").choose_servers(term(9))

    store.before_write(another_leader_first)
    with pytest.raises(Conflict):
        await Scheduler(store, "master").choose_servers(term(3))
    landed = target(store)
    assert landed is not None and landed.fence == 9 and landed.epoch == 1
