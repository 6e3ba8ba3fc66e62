"""The lb holder renders on a change of what it routes and, at rest, only checks that its
server runs: the same view parts applied to the same server are not looked at again until
`RENDER_EVERY_S` has passed, and routes equal to those running are not rendered. On the
in-memory store, with a load balancer that records what it is given."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from meshd.agent.config import DropletIdentity, MeshConfig
from meshd.agent.lease import Term
from meshd.agent.meshview import MeshView
from meshd.roles import entry
from meshd.roles.entry import EntryPoint
from plugins.lb import LbConfig
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
