"""A leader's mirror of a bucket: reads served from memory once its watch has read the bucket
(from the store before that and after the watch breaks), its own writes seen at once, late
deliveries of older revisions ignored; the scheduler's passes read no allocation from the
store while it leads, and one that finds nothing changed builds nothing. On the in-memory
store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

import meshd.roles.scheduler as scheduling
from meshd.agent.key_mirror import KeyMirror
from meshd.agent.lease import Term
from meshd.agent.store import Entry, StoreUnavailable
from meshd.roles.scheduler import Scheduler
from protocol import subjects
from protocol.codec import encode
from protocol.messages import PublishedSpec
from tests.support import factories
from tests.support.memstore import MemoryStore
from tests.support.states import state_from_csv
from tests.support.waiting import until

BUCKET = subjects.ALLOC_BUCKET


class CountingStore(MemoryStore):
    """Counts the whole-bucket reads (`entries`) by bucket; refuses watches on demand."""

    def __init__(self) -> None:
        super().__init__()
        self.listed: dict[str, int] = {}
        self.refuse_watches = False

    async def watch(self, bucket: str, keys: str = ">") -> AsyncIterator[Entry | None]:
        if self.refuse_watches:
            raise StoreUnavailable("no watch now (test)")
        async for entry in super().watch(bucket, keys):
            yield entry

    async def entries(self, bucket: str, keys: str = ">") -> dict[str, Entry]:
        self.listed[bucket] = self.listed.get(bucket, 0) + 1
        return await super().entries(bucket, keys)


@pytest.fixture
async def mirrored() -> AsyncIterator[tuple[CountingStore, KeyMirror]]:
    store = CountingStore()
    await store.put(BUCKET, "a", b"1")
    mirror = KeyMirror(store, BUCKET)
    assert {k: e.value for k, e in (await mirror.entries()).items()} == {"a": b"1"}
    assert store.listed[BUCKET] == 1  # not watching yet: read from the store
    task = asyncio.create_task(mirror.run())
    yield store, mirror
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def values(mirror: KeyMirror) -> dict[str, bytes | None]:
    return {key: entry.value for key, entry in (await mirror.entries()).items()}


def async_equal(mirror: KeyMirror, expected: dict[str, bytes]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await values(mirror) == expected

    return check


async def test_reads_come_from_memory_once_watched_and_follow_others_writes(
    mirrored: tuple[CountingStore, KeyMirror],
) -> None:
    store, mirror = mirrored
    await store.put(BUCKET, "b", b"2")
    await until(lambda: mirror.following, "the watch to follow")
    await until(async_equal(mirror, {"a": b"1", "b": b"2"}), "b's write")
    await store.delete(BUCKET, "a")
    await until(async_equal(mirror, {"b": b"2"}), "a's deletion")
    assert store.listed[BUCKET] == 1  # none of these reads went to the store


async def test_its_own_write_is_read_at_once_and_an_older_delivery_does_not_undo_it(
    mirrored: tuple[CountingStore, KeyMirror],
) -> None:
    store, mirror = mirrored
    await until(lambda: mirror.following, "the watch to follow")
    first = await store.put(BUCKET, "a", b"old")  # the watch may deliver this late
    mirror.wrote("a", b"new", first + 5)
    assert (await values(mirror))["a"] == b"new"
    await asyncio.sleep(0.05)  # the watch delivers `old` (an older revision) meanwhile
    assert (await values(mirror))["a"] == b"new"
    mirror.deleted("a", first + 5)
    assert "a" not in await values(mirror)


async def test_a_broken_watch_sends_reads_to_the_store_until_it_has_read_again(
    mirrored: tuple[CountingStore, KeyMirror],
) -> None:
    store, mirror = mirrored
    await until(lambda: mirror.following, "the watch to follow")
    store.refuse_watches = True
    store.break_watches()
    await until(lambda: not mirror.following, "the mirror to know it is behind")
    await store.put(BUCKET, "c", b"3")
    listed = store.listed[BUCKET]
    assert (await values(mirror))["c"] == b"3"
    assert store.listed[BUCKET] == listed + 1  # from the store
    store.refuse_watches = False
    await until(lambda: mirror.following, "the watch again")
    assert await values(mirror) == {"a": b"1", "c": b"3"}


async def test_a_leading_scheduler_reads_no_allocation_from_the_store_per_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = CountingStore()
    csv = "Project,Servers,MasterSpec,WebSpec\nshop,2,s-2vcpu-4gb,s-1vcpu-1gb\n"
    spec = PublishedSpec(spec=state_from_csv(csv).to_data(), published_by="t", published_at=1.0)
    await store.put(subjects.DESIRED_BUCKET, subjects.DESIRED_KEY, encode(spec))
    scheduler = Scheduler(store, "master")
    term = Term("scheduler", 1, time.monotonic() + 600)
    leading = asyncio.create_task(scheduler.lead(term))
    try:
        await until(lambda: store.value(subjects.INDEX_BUCKET, "placed.master"), "a first pass")
        await until(
            lambda: scheduler.allocations.following and scheduler.index.following, "mirrors"
        )
        await scheduler.schedule(term)  # with the placement it wrote as the last one
        before = dict(store.listed)
        placed: list[object] = []
        monkeypatch.setattr(scheduling, "place", lambda *args: placed.append(args))
        for _ in range(3):
            await scheduler.schedule(term)  # as the resync does: nothing changed
        assert store.listed.get(subjects.ALLOC_BUCKET) == before.get(subjects.ALLOC_BUCKET)
        assert store.listed.get(subjects.INDEX_BUCKET) == before.get(subjects.INDEX_BUCKET)
        assert placed == []  # nor placed again

        # A droplet that joins gets its entry from a pass its card starts, not the resync.
        card = encode(factories.card("spare"))
        await store.put(subjects.INDEX_BUCKET, subjects.node_key("spare"), card)
        await until(lambda: store.value(subjects.INDEX_BUCKET, "placed.spare"), "its entry")
    finally:
        leading.cancel()
        await asyncio.gather(leading, return_exceptions=True)
