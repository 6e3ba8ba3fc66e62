"""A snapshot the provider took but the index could not record (the store did not answer,
during a JetStream move say) is recorded by the next pass instead of a second one: no
snapshot is left that the index does not know, since each is billed."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest

from meshd.agent.lease import Term
from meshd.agent.meshview import MeshView
from meshd.agent.records import snapshot_index
from meshd.agent.store import StoreUnavailable
from meshd.roles.snapshots import Snapshots
from plugins.providers import DropletRecord, DropletStatus, Fence, SnapshotRecord
from protocol import subjects
from tests.support.memstore import MemoryStore


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
