"""Which reports an agent reads: every one on a droplet that holds or may hold a role, else
only those of its rollout peers (the droplets before it in the services it replaces beside),
so that a droplet that only runs projects decodes nothing of the rest of the mesh."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from meshd.agent.feeds import ReportFeed
from meshd.agent.meshview import MeshView
from meshd.core.rollout import turn_peers
from protocol import subjects
from protocol.codec import encode
from protocol.messages import Allocation, NodeStatus
from tests.support import factories
from tests.support.memstore import MemoryStore
from tests.support.waiting import until

DROPLETS = ("master", "web1", "web2", "web3", "web4")


def web(*droplets: str) -> Allocation:
    """A web service whose new generations start beside the old: droplets take turns."""
    return factories.allocation(droplets=droplets, spare_port=8101)


class Peers:
    """The reconciler's side: the reports handed over for rollout turns."""

    def __init__(self) -> None:
        self.peers: dict[str, NodeStatus] = {}

    def set_peers(self, nodes: dict[str, NodeStatus]) -> None:
        self.peers = dict(nodes)


def test_a_droplet_waits_only_for_the_droplets_before_it_in_what_it_replaces_beside() -> None:
    site = web("web1", "web2", "web3")
    database = factories.allocation(service="database", service_kind="database",
                                    data_path="/data", droplets=("web2", "web1"))  # fmt: skip
    assert turn_peers("web3", [site, database]) == {"web1", "web2"}
    assert turn_peers("web1", [database]) == frozenset()  # replaced in place: no turns
    assert turn_peers("web1", [site, database]) == frozenset()
    assert turn_peers("web4", [site, factories.allocation()]) == frozenset()


@pytest.fixture
async def mesh() -> AsyncIterator[tuple[MemoryStore, MeshView, Peers, list[bool]]]:
    store, view, peers, trusted = MemoryStore(), MeshView(), Peers(), [False]
    for name in DROPLETS:
        await write(store, factories.node(name))
    yield store, view, peers, trusted


async def write(store: MemoryStore, node: NodeStatus) -> None:
    await store.put(subjects.NODES_BUCKET, subjects.node_key(node.droplet), encode(node))


async def test_a_droplet_without_roles_reads_only_its_peers_until_it_may_hold_one(
    mesh: tuple[MemoryStore, MeshView, Peers, list[bool]],
) -> None:
    store, view, peers, trusted = mesh
    await view.set_allocations({"a": web("web1", "web2", "web3")})
    feed = ReportFeed(store, view, peers, "web2", lambda: trusted[0])  # type: ignore[arg-type]
    task = asyncio.create_task(feed.run())
    try:
        await until(lambda: set(view.nodes) == {"web1"}, "web1's report alone")
        assert set(peers.peers) == {"web1"}
        await write(store, factories.node("web4", factories.instance()))  # not a peer
        await write(store, factories.node("web1", factories.instance()))
        await until(lambda: view.nodes["web1"].instances, "web1's new report")
        assert not view.nodes.get("web4")

        await view.set_allocations({"a": web("web4", "web2")})
        feed.rescope.set()  # as the allocations' feed does
        await until(lambda: set(view.nodes) == {"web4"}, "the new peer's report alone")
        assert view.nodes["web4"].instances  # its current report, read when it became a peer

        trusted[0] = True  # a JetStream server now, or a role holder
        feed.rescope.set()
        await until(lambda: set(view.nodes) == set(DROPLETS), "every report")
        await view.set_cards({})
        await until(lambda: view.ready, "a ready view")  # every watch has read
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_droplet_with_no_peers_has_a_ready_view_of_no_reports(
    mesh: tuple[MemoryStore, MeshView, Peers, list[bool]],
) -> None:
    store, view, peers, trusted = mesh
    await view.set_allocations({"a": web("web3")})
    await view.set_cards({})
    feed = ReportFeed(store, view, peers, "web3", lambda: trusted[0])  # type: ignore[arg-type]
    task = asyncio.create_task(feed.run())
    try:
        await until(lambda: view.ready, "a ready view")
        assert view.nodes == {} and peers.peers == {}
        await write(store, factories.node("web1", factories.instance()))
        await asyncio.sleep(0.05)
        assert view.nodes == {}  # nothing watched
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
