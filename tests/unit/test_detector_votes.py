"""The detector's votes reach the droplets concerned alone: an agent subscribes to the votes
about its targets and about itself (to refute), and follows the monitor map as it changes, so
a failure's votes cost a few messages, not one per agent of the mesh."""

from __future__ import annotations

import asyncio

from meshd.agent.beats import BeatListener
from meshd.agent.config import DropletIdentity
from meshd.agent.meshview import MeshView
from meshd.core.monitors import targets_of
from meshd.watchers.detector import Detector
from protocol import subjects
from tests.support import factories
from tests.support.memstore import MemoryStore

NAMES = ["master", *(f"web{n:02d}" for n in range(1, 12))]  # 12: everyone watches three


def votes_heard(store: MemoryStore) -> set[str]:
    prefix = subjects.suspect("x").removesuffix("x")
    return {pattern for pattern, _ in store._subscribers if pattern.startswith(prefix)}


async def test_an_agent_hears_the_votes_about_its_targets_and_itself_alone() -> None:
    store = MemoryStore()
    view = MeshView()
    await view.set_cards({n: factories.card(n, address="127.0.0.1") for n in NAMES})
    identity = DropletIdentity("5", "web05", "s-1vcpu-1gb", "127.0.0.1")
    detector = Detector(store, identity, 1, view, None, "mesh", BeatListener(store))  # type: ignore[arg-type]
    following = asyncio.create_task(detector.votes.run())
    try:
        detector._refresh(detector.monitors())
        await asyncio.sleep(0.01)
        targets = set(targets_of("web05", detector.monitors()))
        assert len(targets) == 3
        assert votes_heard(store) == {subjects.suspect(n) for n in {"web05", *targets}}

        # One of its targets fails: the map moves on, and so do the votes it hears.
        gone = sorted(targets)[0]
        await view.set_failures({gone: factories.failure(gone)})
        detector._refresh(detector.monitors())
        await asyncio.sleep(0.01)
        now = set(targets_of("web05", detector.monitors()))
        assert gone not in now and len(now) == 3
        assert votes_heard(store) == {subjects.suspect(n) for n in {"web05", *now}}
    finally:
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)
    assert votes_heard(store) == set()
