"""The mesh's fence book: of two leaders of one role, only the newer gets past a provider
that cannot check fences itself; roles and resources are independent; a lost
compare-and-set is read again, not taken for a refusal."""

from __future__ import annotations

import json

import pytest

from meshd.agent.fencebook import StoreFenceBook
from meshd.agent.store import StoreUnavailable
from plugins.providers import Fence, StaleFence
from protocol import subjects
from tests.support.memstore import MemoryStore


async def test_a_newer_fence_passes_and_an_older_one_is_refused() -> None:
    store = MemoryStore()
    book = StoreFenceBook(lambda: store)

    await book.admit("500000001", Fence("recovery", 5), "power off")
    await book.admit("500000001", Fence("recovery", 5), "power off")  # the same term again
    await book.admit("500000001", Fence("recovery", 7), "power off")
    with pytest.raises(StaleFence) as refused:
        await book.admit("500000001", Fence("recovery", 5), "rebuild")

    assert refused.value.seen == 7
    await book.admit("500000001", Fence("provisioner", 3), "destroy")  # roles apart
    await book.admit("500000002", Fence("recovery", 1), "power off")  # droplets apart
    kept = store.value(subjects.FENCES_BUCKET, subjects.fence_key("recovery", "500000001"))
    assert kept is not None and json.loads(kept) == {"revision": 7}


async def test_a_write_that_lands_first_is_read_again() -> None:
    store = MemoryStore()
    book = StoreFenceBook(lambda: store)
    await book.admit("500000001", Fence("recovery", 5), "power off")
    key = subjects.fence_key("recovery", "500000001")
    interleaved: list[str] = []

    async def successor_writes_first(bucket: str, written: str) -> None:
        if written == key and not interleaved:
            interleaved.append(written)
            entry = await store.get(bucket, key)
            assert entry is not None
            await store.update(bucket, key, json.dumps({"revision": 9}).encode(),
                               last=entry.revision)  # fmt: skip

    store.before_write(successor_writes_first)
    with pytest.raises(StaleFence) as refused:
        await book.admit("500000001", Fence("recovery", 6), "power off")
    assert interleaved and refused.value.seen == 9


async def test_without_a_store_nothing_passes() -> None:
    book = StoreFenceBook(lambda: None)
    with pytest.raises(StoreUnavailable):
        await book.admit("500000001", Fence("recovery", 5), "power off")
