"""The lb holder renders on a change of what it routes and, at rest, only checks that its
server runs: the same view parts applied to the same server are not looked at again until
`RENDER_EVERY_S` has passed, and routes equal to those running are not rendered. On the
in-memory store, with a load balancer that records what it is given."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import pytest

from meshd.agent.config import DropletIdentity, MeshConfig
from meshd.agent.lease import Term
from meshd.agent.meshview import MeshView
from meshd.roles import entry
from meshd.roles.entry import EntryPoint
from plugins.lb import LbConfig
from protocol import subjects
from protocol.codec import encode
from protocol.messages import Lease
from tests.support import factories
from tests.support.memstore import MemoryStore


class RecordingLb:
    def __init__(self) -> None:
        self.applied: list[LbConfig] = []
        self.checked = 0

    async def apply(self, config: LbConfig) -> bool:
        changed = not self.applied or self.applied[-1] != config
        self.applied.append(config)
        return changed

    async def ensure_running(self) -> bool:
        self.checked += 1
        return False

    async def stop(self) -> None:
        pass


async def test_at_rest_the_holder_renders_nothing_and_a_change_renders_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    view = MeshView()
    await view.set_allocations({"shop.prod.web": factories.allocation(droplets=("web1",))})
    me = DropletIdentity("1", "master", "s-1vcpu-1gb", "127.0.0.1")
    point = EntryPoint(
        MemoryStore(),
        me,
        MeshConfig(mesh="m", core=(), passwords={}),
        None,
        view,
        tmp_path,  # type: ignore[arg-type]
    )
    term, lb = Term("lb", 1, time.monotonic() + 60), RecordingLb()
    assert await point.balance(term, lb, view)  # type: ignore[arg-type]
    for _ in range(3):
        assert await point.balance(term, lb, view)  # type: ignore[arg-type]
    assert len(lb.applied) == 1 and lb.checked == 3  # at rest: the server checked, no render

    now = time.time()
    await view.set_nodes({"web1": factories.node("web1", factories.instance(), updated_at=now)})
    assert await point.balance(term, lb, view)  # type: ignore[arg-type]
    assert len(lb.applied) == 2  # a report changed what it routes: rendered at once
    assert lb.applied[-1].upstreams[0].servers  # the healthy instance

    await view.set_nodes(
        {"web1": factories.node("web1", factories.instance(), roles=("builder",), updated_at=now)}
    )
    assert await point.balance(term, lb, view)  # type: ignore[arg-type]
    assert len(lb.applied) == 2  # a report changed, not what it routes: nothing to render

    other = RecordingLb()  # a new server (a new term that picked none up) gets the whole
    assert await point.balance(term, other, view)  # type: ignore[arg-type]
    assert len(other.applied) == 1

    # Nothing changed, but reports age: the same inputs are rendered again in time, and a
    # report that went stale (150 s) leaves the routes.
    monkeypatch.setattr(entry, "RENDER_EVERY_S", 0.0)
    monkeypatch.setattr(entry.time, "time", lambda: now + 200)
    assert await point.balance(term, other, view)  # type: ignore[arg-type]
    assert len(other.applied) == 2 and other.applied[-1].upstreams[0].servers == ()


class StoppedLb(RecordingLb):
    def __init__(self) -> None:
        super().__init__()
        self.stopped_at: float | None = None

    async def stop(self) -> None:
        self.stopped_at = time.monotonic()


@pytest.mark.parametrize("successor", [True, False])
async def test_a_lingering_server_serves_on_while_a_successor_starts_and_stops_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, successor: bool
) -> None:
    """The term expired: the server serves until another holder's lease appears and
    HANDOVER_S beyond (its server starts beside this one), or LINGER_S without one."""
    monkeypatch.setattr(entry, "HANDOVER_S", 0.3)
    monkeypatch.setattr(entry, "LINGER_S", 30.0 if successor else 0.5)
    store = MemoryStore()
    me = DropletIdentity("1", "master", "s-1vcpu-1gb", "127.0.0.1")
    point = EntryPoint(
        store,
        me,
        MeshConfig(mesh="m", core=(), passwords={}),
        None,
        MeshView(),
        tmp_path,  # type: ignore[arg-type]
    )
    mine = Lease(role="lb", holder="master", incarnation=1, acquired_at=time.time())
    revision = await store.put(subjects.LEASES_BUCKET, subjects.lease_key("lb"), encode(mine))
    lb = StoppedLb()
    started = time.monotonic()
    lingering = asyncio.create_task(point._linger(lb, revision))  # type: ignore[arg-type]
    await asyncio.sleep(0.1)
    if successor:
        theirs = dataclasses.replace(mine, holder="web1")
        await store.put(subjects.LEASES_BUCKET, subjects.lease_key("lb"), encode(theirs))
        taken = time.monotonic()
        await asyncio.sleep(0.2)
        assert lb.stopped_at is None  # still serving while the successor's server starts
    await asyncio.wait_for(lingering, 5)
    assert lb.stopped_at is not None
    if successor:
        assert lb.stopped_at - taken >= 0.3  # HANDOVER_S after the successor's lease
        # ... and not LINGER_S (30 s): the wait above gave up after 5 s
    else:
        assert lb.stopped_at - started >= 0.5  # nobody took over: LINGER_S
