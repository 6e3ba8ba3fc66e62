"""Which allocations an agent reads: every one on a droplet that holds or may hold a role,
else those its index entry lists and those its failure records displace to it; its
reconciler never sees a view with one of its own missing, and a role taken leads only once
the view holds every allocation again. On the in-memory store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping

import pytest

from meshd.agent.allocation_feed import AllocationFeed
from meshd.agent.lease import Term
from meshd.agent.meshview import MeshView
from meshd.agent.trust import Trust
from meshd.roles import once_whole
from protocol import subjects
from protocol.cards import PlacedKeys
from protocol.codec import encode
from protocol.messages import Allocation, NodeStatus
from tests.support import factories
from tests.support.memstore import MemoryStore
from tests.support.waiting import until

SHOP = factories.allocation(service="web", droplets=("web1", "web2"))
DB = factories.allocation(service="db", service_kind="database", droplets=("web2",))
BLOG = factories.allocation(project="blog", service="web", droplets=("web3",))
KEYS = {"shop.prod.web": SHOP, "shop.prod.db": DB, "blog.prod.web": BLOG}


class Applied:
    """The reconciler's side: every set of allocations it was given."""

    def __init__(self) -> None:
        self.given: list[set[str]] = []
        self.peers: dict[str, NodeStatus] = {}

    async def apply(self, allocations: Mapping[str, Allocation]) -> None:
        self.given.append({k for k, a in allocations.items() if "web2" in a.droplets})

    def set_peers(self, nodes: dict[str, NodeStatus]) -> None:
        self.peers = dict(nodes)


async def put(store: MemoryStore, key: str, allocation: Allocation) -> None:
    await store.put(subjects.ALLOC_BUCKET, key, encode(allocation))


async def index(store: MemoryStore, droplet: str, *keys: str) -> None:
    entry = PlacedKeys(droplet=droplet, keys=tuple(sorted(keys)), fence=1)
    await store.put(subjects.INDEX_BUCKET, subjects.placed_key(droplet), encode(entry))


Mesh = tuple[MemoryStore, MeshView, Applied, list[bool], AllocationFeed]


@pytest.fixture
async def mesh() -> AsyncIterator[Mesh]:
    store, view, applied, roles = MemoryStore(), MeshView(), Applied(), [False]
    for key, allocation in KEYS.items():
        await put(store, key, allocation)
    feed = AllocationFeed(store, view, applied, "web2", lambda: roles[0], asyncio.Event())  # type: ignore[arg-type]
    task = asyncio.create_task(feed.run())
    yield store, view, applied, roles, feed
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_droplet_without_roles_reads_what_it_runs_and_what_is_displaced_to_it(
    mesh: Mesh,
) -> None:
    store, view, applied, _, _ = mesh
    await index(store, "web2", "shop.prod.web", "shop.prod.db")
    await until(lambda: set(view.allocations) == {"shop.prod.web", "shop.prod.db"}, "its own")
    assert view.knows_allocations and not view.allocations_whole.is_set()
    await until(lambda: applied.given and applied.given[-1] == {"shop.prod.web", "shop.prod.db"},
                "its own, to the reconciler")  # fmt: skip

    # The scheduler places one more service here: the allocation first, then the index.
    extra = factories.allocation(project="blog", service="worker", droplets=("web2",))
    await put(store, "blog.prod.worker", extra)
    await index(store, "web2", "shop.prod.web", "shop.prod.db", "blog.prod.worker")
    await until(lambda: "blog.prod.worker" in view.allocations, "the new one")

    # web3 fails and recovery displaces its blog web instance here.
    record = factories.failure("web3", displaced={"blog.prod.web": "web2"})
    await store.put(subjects.FAILURES_BUCKET, "web3", encode(record))
    await until(lambda: "blog.prod.web" in applied.given[-1], "the displaced instance to run")
    assert "web2" in view.hosted()["blog.prod.web"].droplets
    await store.delete(subjects.FAILURES_BUCKET, "web3")
    await until(lambda: "blog.prod.web" not in view.allocations, "the displaced one gone")
    assert all({"shop.prod.web", "shop.prod.db"} <= given for given in applied.given)


async def test_it_reads_everything_while_it_may_hold_a_role_or_has_no_entry(
    mesh: Mesh,
) -> None:
    store, view, applied, roles, feed = mesh
    await until(view.allocations_whole.is_set, "every allocation (no entry yet)")
    assert set(view.allocations) == set(KEYS)
    await index(store, "web2", "shop.prod.web", "shop.prod.db")
    await until(lambda: set(view.allocations) == {"shop.prod.web", "shop.prod.db"}, "its own")
    assert not view.allocations_whole.is_set()

    roles[0] = True  # a role taken
    leads: list[int] = []

    async def lead(term: Term) -> None:
        assert set(view.allocations) == set(KEYS)  # never the part read before
        leads.append(term.fence)

    trust = Trust("web2", view, None)  # type: ignore[arg-type]
    leading = asyncio.create_task(
        once_whole(lead, trust)(Term("builder", 4, time.monotonic() + 60))
    )
    await asyncio.sleep(0.05)
    assert leads == []  # waits for the wider view
    feed.rescope.set()  # as the lease keeper's observer does
    await until(lambda: leads == [4], "the role to lead on every allocation")
    await leading
    assert all({"shop.prod.web", "shop.prod.db"} <= given for given in applied.given)


async def test_an_allocation_gone_or_no_longer_naming_it_leaves_its_reconciler(
    mesh: Mesh,
) -> None:
    store, view, applied, _, _ = mesh
    await index(store, "web2", "shop.prod.web", "shop.prod.db")
    await until(lambda: applied.given and applied.given[-1] == {"shop.prod.web", "shop.prod.db"},
                "its own")  # fmt: skip
    await put(store, "shop.prod.web", factories.allocation(service="web", droplets=("web1",)))
    await until(lambda: applied.given[-1] == {"shop.prod.db"}, "moved away")
    await store.delete(subjects.ALLOC_BUCKET, "shop.prod.db")
    await until(lambda: applied.given[-1] == set(), "removed")
    await index(store, "web2")
    await until(lambda: view.allocations == {}, "nothing read")
