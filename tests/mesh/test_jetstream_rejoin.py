"""A JetStream server that is also a project droplet dies at three replicas: it is rebuilt
from its snapshot, starts on an empty store instead of the snapshot's rolled-back one, and
catches up; what the other two acknowledged while it was dead is still there when one of them
dies in turn, and the rebuilt server and master keep every stream writable."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from meshd.agent.store import StoreUnavailable
from meshd.agent.store.jetstream import NatsStore
from protocol import subjects
from tests.mesh.test_jetstream_growth import jetstream, projects
from tests.support.mesh import LocalMesh, local_mesh
from tests.support.waiting import wait_for

# Roles read this bucket by key: keys under `test.` disturb none.
BUCKET = subjects.DESIRED_BUCKET
SERVERS = {"master", "shop-web1", "shop-web2"}


async def acknowledged(store: NatsStore, prefix: str, count: int) -> dict[str, int]:
    """`count` keys and as many events written, each retried through leader elections until
    acknowledged; the keys' revisions."""
    written: dict[str, int] = {}
    last: Exception | None = None
    for number in range(count):
        key = f"test.{prefix}.{number}"
        for _ in range(100):
            try:
                written[key] = await store.put(BUCKET, key, key.encode())
                await store.record("test_written", "test", key)
                break
            except (StoreUnavailable, TimeoutError) as err:
                last = err
                await asyncio.sleep(0.2)
        else:
            raise AssertionError(f"{key} never acknowledged: {last!r}")
    return written


async def lead_elsewhere(store: NatsStore, server: str) -> None:
    for stream in (f"KV_{BUCKET}", subjects.EVENTS_STREAM):
        await store.moves().lead_elsewhere(stream, server)


async def read_back(store: NatsStore, keys: dict[str, int]) -> dict[str, Any]:
    """What the store holds of `keys` (value, revision) and the keys its events name, read
    through the elections that the death of a stream leader starts."""
    for _ in range(300):
        try:
            found = {}
            for key in keys:
                entry = await store.get(BUCKET, key)
                found[key] = (entry.value, entry.revision) if entry else None
            events = await store.recent_events(500)
            return {
                "keys": found,
                "events": {e.subject for e in events if e.name == "test_written"},
            }
        except (StoreUnavailable, TimeoutError):
            await asyncio.sleep(0.2)
    raise AssertionError("the store never answered with shop-web2 dead")


def snapshot_after(mesh: LocalMesh, droplet: str, after: float) -> bool:
    return any(
        e["name"] == "snapshot_taken" and e["at"] > after for e in mesh.events_about(droplet) or []
    )


def whole(mesh: LocalMesh) -> dict[str, Any] | None:
    """JetStream once every stream has a current copy on each of the three servers."""
    status = mesh.status_if_readable()
    if status is None:
        return None
    found = status["jetstream"]
    current = [set(s["current"]) for s in found["streams"].values()]
    return found if current and all(c == SERVERS for c in current) else None


def test_a_killed_jetstream_project_droplet_rejoins_empty_and_misses_nothing(
    tmp_path: Path,
) -> None:
    _, three = projects(tmp_path)
    with local_mesh(tmp_path / "mesh") as mesh:
        mesh.ok("publish", three[0], "--deploy-config", three[1], "--wait", "--timeout", "200",
                timeout=240)  # fmt: skip
        assert set(jetstream(mesh)["servers"]) == SERVERS
        wait_for(lambda: whole(mesh), timeout=60, what="every stream on three servers")
        # A restart makes a new snapshot of shop-web1 that holds its JetStream store.
        restarted = time.time()
        mesh.ok("restart", "shop", "prod", timeout=180)
        wait_for(
            lambda: snapshot_after(mesh, "shop-web1", restarted),
            timeout=60,
            what="a snapshot of shop-web1 as a JetStream server",
        )

        # The streams written to are led elsewhere: the writes need no election, so they are
        # all acknowledged well before shop-web1's replacement exists.
        mesh.in_store(lambda store: lead_elsewhere(store, "shop-web1"))
        killed = time.time()
        mesh.ok("chaos", "kill", "shop-web1")
        written = mesh.in_store(lambda store: acknowledged(store, "while-web1-dead", 20))
        written_at = time.time()

        events = wait_for(lambda: mesh.recovered("shop-web1", killed), timeout=120, what="web1")
        rebuilt = next(e for e in events if e["name"] == "droplet_rebuilt" and e["at"] > killed)
        assert rebuilt["at"] > written_at  # acknowledged before its replacement existed
        assert rebuilt["detail"]["from"].startswith("shop-web1-deploy-")  # an older store...
        assert list(mesh.droplet_dir("shop-web1").glob("jetstream.rebuilt-*"))  # ...set aside
        wait_for(lambda: whole(mesh), timeout=90, what="shop-web1 caught up on every stream")

        # The other server that acknowledged them dies: master and the rebuilt one remain.
        mesh.ok("chaos", "kill", "shop-web2")
        after = mesh.in_store(lambda store: read_back(store, written))
        assert after["keys"] == {key: (key.encode(), rev) for key, rev in written.items()}
        assert set(written) <= after["events"]
        # Two of three is a quorum only if the rebuilt server is a working peer of each stream.
        more = mesh.in_store(lambda store: acknowledged(store, "while-web2-dead", 5))
        assert len(more) == 5
