"""The scheduler lists, per droplet, the keys of the allocations that name it
(`mesh_index/placed.<droplet>`): written after the allocations, only when they change, and
removed for a droplet placed no more. On the in-memory store."""

from __future__ import annotations

import time

import pytest

from meshd.agent.key_mirror import KeyMirror
from meshd.agent.lease import Term
from meshd.agent.placed_index import index_placed, placed_keys
from meshd.agent.store import Conflict
from meshd.roles.scheduler import Scheduler
from protocol import subjects
from protocol.cards import PlacedKeys
from protocol.codec import decode, encode
from protocol.messages import Allocation, PublishedSpec
from tests.support import factories
from tests.support.memstore import MemoryStore
from tests.support.states import state_from_csv

CSV = "Project,Servers,MasterSpec,WebSpec\nshop,{servers},s-2vcpu-4gb,s-1vcpu-1gb\n"


def term(fence: int = 1) -> Term:
    return Term("scheduler", fence, time.monotonic() + 600)


async def placed(store: MemoryStore) -> dict[str, tuple[str, ...]]:
    found = await store.entries(subjects.INDEX_BUCKET, subjects.PLACED)
    entries = [decode(entry.value or b"", PlacedKeys) for entry in found.values()]
    return {entry.droplet: entry.keys for entry in entries}


async def publish(store: MemoryStore, servers: int) -> None:
    state = state_from_csv(CSV.format(servers=servers))
    spec = PublishedSpec(spec=state.to_data(), published_by="test", published_at=time.time())
    await store.put(subjects.DESIRED_BUCKET, subjects.DESIRED_KEY, encode(spec))


def test_each_droplet_lists_the_keys_naming_it_and_a_droplet_named_by_none_lists_none() -> None:
    allocations = {
        "shop.prod.web": factories.allocation(service="web", droplets=("web1", "web2")),
        "shop.prod.db": factories.allocation(service="db", droplets=("web2", "web2")),
    }
    assert placed_keys(allocations, ["master", "web1"]) == {
        "master": (),
        "web1": ("shop.prod.web",),
        "web2": ("shop.prod.db", "shop.prod.web"),  # named twice, listed once
    }


async def test_the_scheduler_indexes_every_droplet_and_follows_a_scale_in() -> None:
    store = MemoryStore()
    await publish(store, 3)
    await Scheduler(store, "master").schedule(term())
    allocations = {
        key: decode(entry.value or b"", Allocation)
        for key, entry in (await store.entries(subjects.ALLOC_BUCKET)).items()
    }
    index = await placed(store)
    assert set(index) == {"master", "shop-web1", "shop-web2"}
    for droplet, keys in index.items():
        assert keys == tuple(sorted(k for k, a in allocations.items() if droplet in a.droplets))
    assert any(index.values())

    writes: list[str] = []
    store.before_write(lambda bucket, key: writes.append(f"{bucket}/{key}"))
    await Scheduler(store, "master").schedule(term(2))  # nothing changed: nothing written
    assert [w for w in writes if "mesh_events" not in w] == []

    await publish(store, 2)
    await Scheduler(store, "master").schedule(term(3))
    assert set(await placed(store)) == {"master", "shop-web1"}  # shop-web2's is removed

    # A droplet outside the placement (a local mesh's spare) is listed with nothing to read.
    card = factories.card("spare")
    await store.put(subjects.INDEX_BUCKET, subjects.node_key("spare"), encode(card))
    await Scheduler(store, "master").schedule(term(4))
    assert (await placed(store))["spare"] == ()


async def test_an_entry_written_meanwhile_by_another_leader_is_not_overwritten() -> None:
    store = MemoryStore()
    allocations = {"shop.prod.web": factories.allocation(service="web", droplets=("web1",))}
    stale = PlacedKeys(droplet="web1", keys=(), fence=1)
    await store.put(subjects.INDEX_BUCKET, subjects.placed_key("web1"), encode(stale))
    successor: list[bool] = []

    async def successor_writes_first(bucket: str, key: str) -> None:
        if bucket == subjects.INDEX_BUCKET and not successor:
            successor.append(True)
            newer = PlacedKeys(droplet="web1", keys=("shop.prod.web",), fence=9)
            await store.put(subjects.INDEX_BUCKET, subjects.placed_key("web1"), encode(newer))

    store.before_write(successor_writes_first)
    with pytest.raises(Conflict):
        await index_placed(store, term(1), allocations, ["web1"], KeyMirror(store, "mesh_index"))
    value = store.value(subjects.INDEX_BUCKET, subjects.placed_key("web1"))
    assert value is not None and decode(value, PlacedKeys).fence == 9


async def test_before_any_publish_every_droplet_is_listed_with_what_exists() -> None:
    store = MemoryStore()
    for name in ("master", "mesh-2"):
        await store.put(
            subjects.INDEX_BUCKET, subjects.node_key(name), encode(factories.card(name))
        )
    left = factories.allocation(service="web", droplets=("mesh-2",))
    await store.put(subjects.ALLOC_BUCKET, "shop.prod.web", encode(left))  # no spec says it
    await Scheduler(store, "master").schedule(term())
    assert await placed(store) == {"master": (), "mesh-2": ("shop.prod.web",)}
