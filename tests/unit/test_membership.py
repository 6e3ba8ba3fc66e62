"""A droplet's presence: beats on their own clock, and the report written when what it says
changes (signalled or not) and otherwise only once a refresh period has passed."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from meshd.agent import membership
from meshd.agent.config import DropletIdentity
from meshd.agent.membership import Membership
from meshd.agent.store import Received
from protocol import subjects
from protocol.cards import NodeCard
from protocol.codec import decode
from protocol.messages import LivenessBeat, NodeStatus
from tests.support import factories
from tests.support.memstore import MemoryStore

ME = DropletIdentity("1", "web1", "s-1vcpu-1gb", "10.0.0.1")


class Reports:
    """The store's writes of this droplet's report, decoded."""

    def __init__(self, store: MemoryStore) -> None:
        self.seen: list[NodeStatus] = []

        async def written(bucket: str, key: str) -> None:
            if (bucket, key) == (subjects.NODES_BUCKET, subjects.node_key(ME.name)):
                self.seen.append(current[0])

        store.before_write(written)


current: list[NodeStatus] = []


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(membership, "STATUS_MIN_GAP_S", 0.01)
    monkeypatch.setattr(membership, "STATUS_CHECK_S", 0.05)
    monkeypatch.setattr(membership, "BEAT_EVERY_S", 0.05)


async def running(store: MemoryStore, changed: asyncio.Event, seconds: float) -> None:
    task = asyncio.create_task(Membership(store, ME, lambda: current[0], changed).run())
    await asyncio.sleep(seconds)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_an_unchanged_report_is_written_once_until_the_refresh(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(membership, "STATUS_REFRESH_S", 0.5)
    store, changed = MemoryStore(), asyncio.Event()
    reports = Reports(store)
    current[:] = [factories.node("web1")]
    await running(store, changed, 0.3)
    assert len(reports.seen) == 1  # 0.3 s of a status looked at every 0.05 s

    await running(store, changed, 1.25)  # a new life: written at once, then after 0.5 and 1 s
    assert len(reports.seen) == 1 + 3


async def test_a_change_is_written_at_once_when_signalled_and_soon_when_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(membership, "STATUS_REFRESH_S", 60.0)
    monkeypatch.setattr(membership, "STATUS_CHECK_S", 0.3)
    store, changed = MemoryStore(), asyncio.Event()
    reports = Reports(store)
    current[:] = [factories.node("web1")]
    task = asyncio.create_task(Membership(store, ME, lambda: current[0], changed).run())
    try:
        await asyncio.sleep(0.1)
        current[0] = factories.node("web1", factories.instance())
        changed.set()
        await asyncio.sleep(0.05)  # well before the next look
        assert [len(r.instances) for r in reports.seen] == [0, 1]

        current[0] = dataclasses.replace(current[0], tls_expires=5.0)  # nobody signals it
        await asyncio.sleep(0.5)
        assert [r.tls_expires for r in reports.seen] == [0.0, 0.0, 5.0]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    stored = store.value(subjects.NODES_BUCKET, subjects.node_key("web1"))
    assert stored is not None and decode(stored, NodeStatus).tls_expires == 5.0


async def test_beats_keep_their_period_with_a_sequence() -> None:
    store, changed = MemoryStore(), asyncio.Event()
    beats: list[LivenessBeat] = []

    async def heard(msg: Received) -> None:
        beats.append(decode(msg.data, LivenessBeat))

    await store.subscribe(subjects.beats("web1"), heard)
    current[:] = [factories.node("web1", incarnation=7)]
    await running(store, changed, 0.52)
    assert 5 <= len(beats) <= 12  # one every 0.05 s (11), fewer on a loaded machine
    assert [b.seq for b in beats] == list(range(1, len(beats) + 1))
    assert {b.incarnation for b in beats} == {7}


async def test_the_card_is_written_before_the_first_report_and_again_when_it_changes_or_is_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(membership, "STATUS_REFRESH_S", 0.1)
    store, changed = MemoryStore(), asyncio.Event()
    writes: list[str] = []

    async def written(bucket: str, key: str) -> None:
        writes.append(bucket)

    store.before_write(written)
    current[:] = [factories.node("web1")]
    task = asyncio.create_task(Membership(store, ME, lambda: current[0], changed).run())
    try:
        await asyncio.sleep(0.35)  # reports refreshed three times or so, the card not
        assert writes[:2] == [subjects.INDEX_BUCKET, subjects.NODES_BUCKET]
        assert writes.count(subjects.INDEX_BUCKET) == 1 and writes.count(subjects.NODES_BUCKET) > 2
        current[0] = factories.node("web1", size="s-2vcpu-4gb")  # resized
        changed.set()
        await asyncio.sleep(0.1)
        assert writes.count(subjects.INDEX_BUCKET) == 2

        await store.delete(subjects.INDEX_BUCKET, subjects.node_key("web1"))  # a state lost
        await asyncio.sleep(0.25)  # found missing at the next refresh
        assert writes.count(subjects.INDEX_BUCKET) == 4  # the delete, then the card again
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    stored = store.value(subjects.INDEX_BUCKET, subjects.node_key("web1"))
    assert stored is not None and decode(stored, NodeCard).size == "s-2vcpu-4gb"
