"""A snapshot the provider took but the index could not record (the store did not answer,
during a JetStream move say) is recorded by the next pass instead of a second one: no
snapshot is left that the index does not know, since each is billed."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from dataclasses import dataclass, field

import pytest

from meshd.agent.lease import Term
from meshd.agent.meshview import MeshView
from meshd.agent.records import snapshot_index
from meshd.agent.store import StoreUnavailable
from meshd.roles.snapshots import AT_ONCE, CHECK_S, Snapshots
from plugins.providers import DropletRecord, DropletStatus, Fence, SnapshotRecord
from protocol import subjects
from tests.support.factories import node
from tests.support.memstore import MemoryStore
from tests.support.waiting import until


@dataclass
class Account:
    """A provider that keeps the snapshots it takes."""

    name: str = "fake"
    snapshots: dict[str, SnapshotRecord] = field(default_factory=dict)

    async def snapshot(self, droplet_id: str, name: str, *, fence: Fence | None) -> SnapshotRecord:
        record = SnapshotRecord(str(len(self.snapshots) + 1), name, droplet_id, time.time(), 0.1)
        self.snapshots[record.id] = record
        return record

    async def list_snapshots(self) -> list[SnapshotRecord]:
        return list(self.snapshots.values())

    async def delete_snapshot(self, snapshot_id: str, *, fence: Fence | None) -> None:
        del self.snapshots[snapshot_id]


WEB1 = DropletRecord("7", "web1", "s-1vcpu-1gb", "10.0.0.3", DropletStatus.ACTIVE, (), 0.0)


async def test_a_snapshot_not_written_down_is_recorded_by_the_next_pass_not_taken_again() -> None:
    store = MemoryStore()
    account = Account()
    role = Snapshots(store, account, MeshView(), "master", "tag")  # type: ignore[arg-type]
    term = Term("snapshots", 4, time.monotonic() + 600)
    down = True

    async def unavailable(bucket: str, key: str) -> None:
        if bucket == subjects.SNAPSHOTS_BUCKET and down:
            raise StoreUnavailable("sealed for a move (test)")

    store.before_write(unavailable)
    role._indexes["web1"] = await snapshot_index(store, "web1")  # noqa: SLF001
    with pytest.raises(StoreUnavailable):
        await role._take(term, WEB1, {"shop.prod.backend": 2})  # noqa: SLF001
    assert len(account.snapshots) == 1

    down = False
    await role._take(term, WEB1, {"shop.prod.backend": 2})  # noqa: SLF001
    assert len(account.snapshots) == 1  # the first one, recorded now
    index = (await snapshot_index(store, "web1")).index
    assert index is not None
    assert [s.id for s in index.snapshots] == list(account.snapshots)


@dataclass
class SlowAccount(Account):
    """Snapshots that last until the test lets them end; the droplets of the mesh."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    started: list[str] = field(default_factory=list)
    droplets: list[DropletRecord] = field(default_factory=list)

    async def snapshot(self, droplet_id: str, name: str, *, fence: Fence | None) -> SnapshotRecord:
        self.started.append(droplet_id)
        await self.gate.wait()
        return await super().snapshot(droplet_id, name, fence=fence)

    async def list(self, tag: str) -> list[DropletRecord]:
        return self.droplets


async def test_droplets_are_snapshotted_side_by_side_a_few_at_a_time() -> None:
    names = [f"web{n}" for n in range(1, 7)]
    account = SlowAccount(droplets=[dataclasses.replace(WEB1, id=str(n), name=name)
                                    for n, name in enumerate(names, start=1)])  # fmt: skip
    view = MeshView()
    await view.set_nodes({name: node(name, updated_at=time.time()) for name in names})
    await view.set_cards({})  # nothing here reads them; the view is ready once they are in
    await view.set_allocations({})  # nothing to run: settled, and due (no snapshot yet)
    role = Snapshots(MemoryStore(), account, view, "master", "tag")  # type: ignore[arg-type]
    leading = asyncio.create_task(role.lead(Term("snapshots", 4, time.monotonic() + 600)))
    try:
        await until(lambda: len(account.started) == AT_ONCE, "four snapshots under way", 10)
        await asyncio.sleep(CHECK_S * 2)
        assert len(account.started) == AT_ONCE  # no more at once, none waits for another
        account.gate.set()
        await until(lambda: len(account.snapshots) == len(names), "every droplet snapshotted", 20)
    finally:
        leading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await leading
    assert sorted(account.started) == [str(n) for n in range(1, 7)]
