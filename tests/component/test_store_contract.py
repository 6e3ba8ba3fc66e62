"""The store's contract, on a real nats-server and on the in-memory store that unit tests use
(so that the stand-in behaves as the real thing): compare-and-set, watches with their marker,
and the error contract — a lost compare-and-set is `Conflict`, no answer is
`StoreUnavailable`, and no nats type or nats error ever leaves the store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshd.agent.store import Conflict, Delivery, Entry, Received, Store, StoreUnavailable
from protocol import subjects
from tests.support.jetstream import connect
from tests.support.memstore import MemoryStore
from tests.support.nats import NatsServer, running_nats


@pytest.fixture(params=["nats", "memory"])
async def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
        return
    with running_nats(tmp_path) as server:
        store = await connect(server)
        try:
            yield store
        finally:
            await store.close()


async def test_create_and_update_are_compare_and_set(any_store: Store) -> None:
    bucket = subjects.ALLOC_BUCKET
    first = await any_store.create(bucket, "k", b"1")
    with pytest.raises(Conflict):
        await any_store.create(bucket, "k", b"again")
    second = await any_store.update(bucket, "k", b"2", last=first)
    with pytest.raises(Conflict):
        await any_store.update(bucket, "k", b"late", last=first)  # a deposed writer
    with pytest.raises(Conflict):
        await any_store.delete(bucket, "k", last=first)
    assert await any_store.get(bucket, "k") == Entry("k", b"2", second)
    await any_store.delete(bucket, "k", last=second)
    assert await any_store.get(bucket, "k") is None


async def test_a_watch_gives_current_values_then_its_marker_then_changes(any_store: Store) -> None:
    bucket = subjects.NODES_BUCKET
    await any_store.put(bucket, "a", b"1")
    await any_store.put(bucket, "b", b"2")
    seen: list[Entry | None] = []

    async def watch() -> None:
        async for entry in any_store.watch(bucket):
            seen.append(entry)
            if len(seen) == 5:
                return

    watching = asyncio.create_task(watch())
    while len(seen) < 3:
        await asyncio.sleep(0.02)
    await any_store.put(bucket, "a", b"3")
    await any_store.delete(bucket, "b")
    await asyncio.wait_for(watching, 10)
    keys = [(e.key, e.value) if e else None for e in seen]
    assert keys == [("a", b"1"), ("b", b"2"), None, ("a", b"3"), ("b", None)]


async def test_a_filtered_listing_holds_every_matching_key_many_times_over(
    any_store: Store,
) -> None:
    """A listing by key filter waits for its keys (nats-py's own "done" marker can come
    before them), and one with no match is empty at once."""
    bucket = subjects.DESIRED_BUCKET
    for n in range(20):
        await any_store.put(bucket, f"restart.shop.prod.s{n}", b"x")
        if n % 5 == 0:
            await any_store.delete(bucket, f"restart.shop.prod.s{n}")
    await any_store.put(bucket, "spec", b"not matched")
    wanted = {f"restart.shop.prod.s{n}" for n in range(20) if n % 5}
    for _ in range(30):
        assert set(await any_store.entries(bucket, subjects.RESTARTS)) == wanted
        assert await any_store.entries(bucket, "config.>") == {}


async def test_core_subscribers_get_the_stores_own_values_and_answer_requests(
    any_store: Store,
) -> None:
    async def echo(message: Received) -> None:
        assert isinstance(message.data, bytes)
        await message.respond(b"echo " + message.data)

    subscription = await any_store.subscribe(subjects.probe("web1"), echo)
    try:
        assert await any_store.request(subjects.probe("web1"), b"hi", 2.0) == b"echo hi"
        assert await any_store.request(subjects.probe("web2"), b"hi", 0.2) is None  # nobody
    finally:
        await subscription.unsubscribe()
    await subscription.unsubscribe()  # twice is harmless


async def test_a_dead_server_is_store_unavailable_and_nothing_else(tmp_path: Path) -> None:
    with running_nats(tmp_path) as server:
        store = await connect(server)
        try:
            queue = await store.work_queue(
                subjects.NOTIFY_STREAM, subjects.NOTIFY_SUBJECTS, subjects.NOTIFY_CONSUMER
            )
            await store.enqueue(subjects.notify("email"), b"mail")
            taken = await queue.take(5.0)
            assert isinstance(taken, Delivery)  # the store's own value, not a nats message
            assert (taken.data, taken.attempt) == (b"mail", 1)
            await queue.done(taken)
            _kill(server)
            calls = {
                "get": store.get(subjects.ALLOC_BUCKET, "k"),
                "put": store.put(subjects.ALLOC_BUCKET, "k", b"v"),
                "create": store.create(subjects.ALLOC_BUCKET, "k", b"v"),
                "update": store.update(subjects.ALLOC_BUCKET, "k", b"v", last=1),
                "delete": store.delete(subjects.ALLOC_BUCKET, "k"),
                "entries": store.entries(subjects.ALLOC_BUCKET),
                "enqueue": store.enqueue(subjects.notify("email"), b"v"),
                "queued": store.queued(subjects.NOTIFY_STREAM),
                "recent_events": store.recent_events(5),
                "take": queue.take(0.5),
            }
            for name, call in calls.items():
                with pytest.raises(StoreUnavailable):
                    await asyncio.wait_for(call, 20)
                    pytest.fail(f"{name} answered without a server")
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(anext(aiter(store.watch(subjects.ALLOC_BUCKET))), 20)
            assert await store.request(subjects.probe("web1"), b"x", 0.2) is None
            await store.publish(subjects.beats("web1"), b"dropped")  # silently
            assert not await store.jetstream_answers(0.2)
            await queue.close()
        finally:
            await store.close()


def _kill(server: NatsServer) -> None:
    server.kill()
