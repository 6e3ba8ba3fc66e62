"""How a term ends is told once and truly: `lease_lost` only when a renewal was refused (another
holder may act), `lease_expired` when no renewal got through in time, `lease_released` when the
holder handed the role over. A role's programming error ends the agent; a failure of the
outside world only ends the term. On the in-memory store."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from meshd.agent.lease import LeaseKeeper, LeaseTiming, Term
from meshd.agent.leaseboard import LeaseBoard
from meshd.agent.store import StoreUnavailable
from plugins.providers import ProviderError
from protocol import subjects
from tests.support.memstore import MemoryStore
from tests.support.waiting import until

FAST = LeaseTiming(ttl=1.0, renew_every=0.05, margin=0.2, retry_every=0.05)


def keeper(store: MemoryStore, lead: Callable[[Term], Awaitable[None]]) -> LeaseKeeper:
    return LeaseKeeper(store, "scheduler", "master", 1, lead, timing=FAST)


async def forever(term: Term) -> None:
    await asyncio.Event().wait()


def endings(store: MemoryStore) -> list[str]:
    return [e.name for e in store.events if e.name.startswith("lease_") and e.name != "lease_taken"]


async def test_a_holder_that_stops_releases_the_lease_and_says_only_that() -> None:
    store = MemoryStore()
    task = asyncio.create_task(keeper(store, forever).run())
    await until(lambda: store.value(subjects.LEASES_BUCKET, "scheduler"), "the lease taken")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert endings(store) == ["lease_released"]
    assert store.value(subjects.LEASES_BUCKET, "scheduler") is None  # handed over at once


async def test_a_lease_taken_over_is_lost() -> None:
    store = MemoryStore()
    holder = keeper(store, forever)
    task = asyncio.create_task(holder.run())
    try:
        await until(lambda: holder.term is not None, "a term")
        entry = await store.get(subjects.LEASES_BUCKET, "scheduler")
        assert entry is not None
        await store.update(subjects.LEASES_BUCKET, "scheduler", b"another", last=entry.revision)
        await until(lambda: "lease_lost" in endings(store), "the loss told")
        assert endings(store)[0] == "lease_lost"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_term_no_renewal_reached_expires() -> None:
    store = MemoryStore()
    holder = keeper(store, forever)
    task = asyncio.create_task(holder.run())
    try:
        await until(lambda: holder.term is not None, "a term")
        store.unavailable = True  # an election that outlasts the term's deadline
        await until(lambda: holder.term is None, "the term's end", timeout=5)
        store.unavailable = False
        await until(lambda: endings(store), "the ending told")
        assert endings(store)[0] == "lease_expired"
        assert "lease_lost" not in endings(store)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_failure_of_the_outside_world_ends_the_term_and_the_keeper_competes_again() -> None:
    store = MemoryStore()
    terms: list[int] = []

    async def provider_down(term: Term) -> None:
        terms.append(term.fence)
        if len(terms) == 1:
            raise ProviderError("create droplet 'web1'", "the API answers 503")
        await asyncio.Event().wait()

    task = asyncio.create_task(keeper(store, provider_down).run())
    try:
        await until(lambda: len(terms) == 2, "a second term")
        assert terms[1] > terms[0]
        assert endings(store)[0] == "lease_released"  # handed over, not held till the TTL
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_programming_error_in_a_role_ends_the_keeper_with_its_traceback() -> None:
    store = MemoryStore()

    async def buggy(term: Term) -> None:
        raise KeyError("a bug")

    with pytest.raises(ExceptionGroup) as caught:
        await asyncio.wait_for(keeper(store, buggy).run(), 5)
    assert caught.group_contains(KeyError)


async def test_a_keeper_that_does_not_hold_the_lease_waits_on_the_board_and_not_the_store() -> None:
    store = MemoryStore()
    board = LeaseBoard(store)
    watching = asyncio.create_task(board.run())
    creates: list[str] = []
    create = store.create

    async def counted(bucket: str, key: str, value: bytes, *, ttl: float | None = None) -> int:
        creates.append(key)
        return await create(bucket, key, value, ttl=ttl)

    store.create = counted  # type: ignore[method-assign]
    holder = keeper(store, forever)
    follower = LeaseKeeper(store, "scheduler", "mesh-2", 1, forever, timing=FAST, board=board)
    tasks = [asyncio.create_task(holder.run())]
    try:
        await until(lambda: holder.term is not None, "the holder's term")
        tasks.append(asyncio.create_task(follower.run()))
        await asyncio.sleep(0.5)  # ten renewals of the holder; the follower waits
        assert follower.term is None
        assert len(creates) <= 2  # the holder's take, and at most one try before the board knew
        tasks[0].cancel()  # the holder stops and releases the lease
        await until(lambda: follower.term is not None, "the follower's term", timeout=5)
        assert len(creates) <= 3  # taken at once, not after a stream of tries
    finally:
        for task in [*tasks, watching]:
            task.cancel()
        await asyncio.gather(*tasks, watching, return_exceptions=True)


async def test_a_keeper_cancelled_while_its_role_winds_down_stops() -> None:
    """The keeper is cancelled (the agent shuts down) just as a lost term stops its role, and
    the role takes a moment to stop: the keeper's own cancellation is not taken for the
    role's, so it ends instead of competing again for ever."""
    store = MemoryStore()
    stopping = asyncio.Event()

    async def slow_to_stop(term: Term) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            stopping.set()
            await asyncio.sleep(0.2)
            raise

    holder = keeper(store, slow_to_stop)
    task = asyncio.create_task(holder.run())
    await until(lambda: holder.term is not None, "a term")
    entry = await store.get(subjects.LEASES_BUCKET, "scheduler")
    assert entry is not None
    await store.update(subjects.LEASES_BUCKET, "scheduler", b"another", last=entry.revision)
    await until(stopping.is_set, "the role told to stop")
    task.cancel()
    await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 5)
    assert task.cancelled()


async def test_a_create_whose_answer_was_lost_is_taken_back_not_left_to_expire() -> None:
    """The store stalls as the lease is created: it landed, the answer did not. The keeper
    finds the lease in its own name and renews it at once, well before it would expire (a
    lease nobody acts on would stop the entry's last holder for nothing)."""
    store = MemoryStore()
    created = store.create
    lost: list[int] = []

    async def landed_but_lost(bucket: str, key: str, value: bytes, *, ttl: float | None = None):
        revision = await created(bucket, key, value, ttl=ttl)
        if not lost:
            lost.append(revision)
            raise StoreUnavailable("the answer was lost")
        return revision

    store.create = landed_but_lost  # type: ignore[method-assign]
    holder = LeaseKeeper(
        store,
        "lb",
        "master",
        1,
        forever,
        timing=LeaseTiming(ttl=10.0, renew_every=0.05, margin=0.2, retry_every=0.05),
    )
    task = asyncio.create_task(holder.run())
    try:
        await until(lambda: holder.term is not None, "the term taken back", timeout=2)
        assert holder.term is not None and holder.term.fence > lost[0]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_another_holders_lease_is_not_taken_after_a_lost_answer() -> None:
    store = MemoryStore()
    other = keeper(store, forever)
    other_task = asyncio.create_task(other.run())
    await until(lambda: other.term is not None, "the other's term")
    created = store.create

    async def unavailable_once(bucket: str, key: str, value: bytes, *, ttl: float | None = None):
        store.create = created  # type: ignore[method-assign]
        raise StoreUnavailable("the answer was lost")

    store.create = unavailable_once  # type: ignore[method-assign]
    mine = LeaseKeeper(store, "scheduler", "web1", 1, forever, timing=FAST)
    task = asyncio.create_task(mine.run())
    try:
        await asyncio.sleep(0.5)
        assert mine.term is None and other.term is not None
    finally:
        for running in (task, other_task):
            running.cancel()
        await asyncio.gather(task, other_task, return_exceptions=True)


async def test_a_renewal_whose_answer_was_lost_is_not_taken_for_a_lost_lease() -> None:
    store = MemoryStore()
    holder = keeper(store, forever)
    task = asyncio.create_task(holder.run())
    try:
        await until(lambda: holder.term is not None, "a term")
        term = holder.term
        assert term is not None
        updated = store.update

        async def landed_but_lost(*args: Any, **kwargs: Any) -> int:
            store.update = updated  # type: ignore[method-assign]
            await updated(*args, **kwargs)
            raise StoreUnavailable("the answer was lost")

        store.update = landed_but_lost  # type: ignore[method-assign]
        await until(lambda: store.update is updated, "the renewal whose answer is lost")
        await asyncio.sleep(0.3)  # several renewals later
        assert holder.term is term and term.valid and "lease_lost" not in endings(store)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_keeper_cancelled_while_its_role_fails_on_the_way_out_stops() -> None:
    store = MemoryStore()
    stopping = asyncio.Event()

    async def fails_when_stopped(term: Term) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            stopping.set()
            await asyncio.sleep(0.2)
            raise ProviderError("gone while stopping") from None

    holder = keeper(store, fails_when_stopped)
    task = asyncio.create_task(holder.run())
    await until(lambda: holder.term is not None, "a term")
    entry = await store.get(subjects.LEASES_BUCKET, "scheduler")
    assert entry is not None
    await store.update(subjects.LEASES_BUCKET, "scheduler", b"another", last=entry.revision)
    await until(stopping.is_set, "the role told to stop")
    task.cancel()
    await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 5)
    assert task.cancelled()
