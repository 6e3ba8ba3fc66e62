"""`SubjectSet`: an agent receives the subjects of what it watches now (the beats and the votes
about its targets), and nothing of the rest of the mesh."""

from __future__ import annotations

import asyncio

from meshd.agent.store import Received
from meshd.agent.subject_set import SubjectSet
from protocol import subjects
from tests.support.memstore import MemoryStore


async def test_only_the_subjects_of_the_names_wanted_now_are_received() -> None:
    store = MemoryStore()
    heard: list[str] = []

    async def handler(message: Received) -> None:
        heard.append(message.subject)

    votes = SubjectSet(store, subjects.suspect, handler, "Votes")
    votes.want({"web1", "web2"})
    running = asyncio.create_task(votes.run())
    try:
        await asyncio.sleep(0.01)
        for droplet in ("web1", "web2", "web3"):
            await store.publish(subjects.suspect(droplet), b"vote")
        assert heard == ["mesh.suspect.web1", "mesh.suspect.web2"]

        heard.clear()
        votes.want({"web2", "web3"})  # web1 is no longer a target, web3 is
        await asyncio.sleep(0.01)
        for droplet in ("web1", "web2", "web3"):
            await store.publish(subjects.suspect(droplet), b"vote")
        assert heard == ["mesh.suspect.web2", "mesh.suspect.web3"]
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    heard.clear()
    await store.publish(subjects.suspect("web2"), b"vote")
    assert heard == []  # unsubscribed when it stops
