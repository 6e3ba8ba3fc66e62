"""A droplet that scale-in destroyed, confirmed dead because its last report landed after the
provisioner removed it: recovery finds it gone and no longer placed, and forgets it (report,
record, `droplet_forgotten`) instead of reporting for ever that it cannot be rebuilt. A droplet
that is gone but still placed stays a problem (the provisioner makes it again)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from meshd.agent.lease import Term
from meshd.agent.meshview import MeshView
from meshd.core.placement import Droplet, Placement
from meshd.roles.recovery import Recovery
from plugins.providers import DropletRecord, Fence
from protocol import subjects
from protocol.codec import encode
from protocol.messages import FailureState, PlacementRecord
from tests.support.factories import card, failure, node
from tests.support.memstore import MemoryStore

TAG = "mesh:test"


class GoneProvider:
    """A provider that has no droplet any more; it could rebuild one."""

    name = "gone"

    async def list(self, tag: str | None = None) -> list[DropletRecord]:
        return []

    async def rebuild(self, droplet_id: str, *, fence: Fence | None, **more: Any) -> DropletRecord:
        raise AssertionError("nothing may be rebuilt")


async def scaled_to(store: MemoryStore, *names: str) -> None:
    placement = Placement(tuple(Droplet(n, "s-1vcpu-1gb") for n in names), (), ())
    record = PlacementRecord(
        placement=placement.to_data(), spec_revision=1, fence=1, written_at=time.time()
    )
    await store.put(subjects.DESIRED_BUCKET, subjects.PLACEMENT_KEY, encode(record))


async def recovery_of_displaced_web1(store: MemoryStore) -> Recovery:
    displaced = failure("web1", state=FailureState.DISPLACED)
    await store.put(subjects.FAILURES_BUCKET, subjects.failure_key("web1"), encode(displaced))
    await store.put(subjects.NODES_BUCKET, subjects.node_key("web1"), encode(node("web1")))
    await store.put(subjects.INDEX_BUCKET, subjects.node_key("web1"), encode(card("web1")))
    view = MeshView()
    await view.set_failures({"web1": displaced})
    return Recovery(store, GoneProvider(), view, "master", TAG)  # type: ignore[arg-type]


def names(store: MemoryStore) -> list[str]:
    return [e.name for e in store.events]


async def test_a_droplet_scaled_in_and_gone_is_forgotten() -> None:
    store = MemoryStore()
    await scaled_to(store, "master")
    recovery = await recovery_of_displaced_web1(store)
    await recovery.recover(Term("recovery", 7, time.monotonic() + 60))
    assert store.value(subjects.FAILURES_BUCKET, subjects.failure_key("web1")) is None
    assert store.value(subjects.NODES_BUCKET, subjects.node_key("web1")) is None
    assert store.value(subjects.INDEX_BUCKET, subjects.node_key("web1")) is None  # no ghost
    await asyncio.sleep(0)  # events are recorded in the background
    assert names(store) == ["droplet_forgotten"]


async def test_a_droplet_gone_but_still_placed_stays_a_problem() -> None:
    store = MemoryStore()
    await scaled_to(store, "master", "web1")
    recovery = await recovery_of_displaced_web1(store)
    await recovery.recover(Term("recovery", 7, time.monotonic() + 60))
    assert store.value(subjects.FAILURES_BUCKET, subjects.failure_key("web1")) is not None
    assert store.value(subjects.NODES_BUCKET, subjects.node_key("web1")) is not None
    await asyncio.sleep(0)  # events are recorded in the background
    assert names(store) == ["recovery_failed"]
