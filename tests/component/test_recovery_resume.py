"""A recovery leader that dies midway is replaced by one that finishes the recovery without
repeating a finished step (real nats-server, real local provider): the first leader fences,
displaces and rebuilds, then dies before it can write the rebuild down; the second one finds
the replacement, records it, and removes the record once the replacement is healthy. The
provider saw one power off and one rebuild, and refuses the dead leader's fence afterwards.
The dead droplet's volume is detached only once it is fenced, and follows it to the
replacement."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from meshd.agent.lease import Term, TermEnded
from meshd.agent.meshview import MeshView
from meshd.agent.store import Store
from meshd.roles.recovery import Recovery
from plugins.providers import Fence, ProviderContext, StaleFence
from plugins.providers.local import LocalProvider, create
from protocol import subjects
from protocol.codec import decode, encode
from protocol.messages import Allocation, FailureRecord, FailureState, InstanceStatus, NodeStatus
from tests.support import factories
from tests.support.factories import instance
from tests.support.reconciling import allocation

TAG = "mesh:test"
SLEEPER = "import sys, time; time.sleep(600)"
NEW_USER_DATA = '{"servers_epoch": 2}'


@pytest.fixture
async def provider(tmp_path: Path) -> AsyncIterator[LocalProvider]:
    config = {
        "dir": str(tmp_path / "account"),
        "launcher": [sys.executable, "-c", SLEEPER],
        "volumes": str(tmp_path / "volumes"),
    }
    provider = create(ProviderContext(mesh="test", config=config))
    yield provider
    for droplet in await provider.list():
        await provider.destroy(droplet.id, fence=None)


def node(name: str, incarnation: int, *instances: InstanceStatus) -> NodeStatus:
    return factories.node(
        name, *instances, address="127.0.0.1", incarnation=incarnation, updated_at=time.time()
    )


def actions(tmp_path: Path) -> list[tuple[Any, ...]]:
    lines = (tmp_path / "account" / "actions.log").read_text().splitlines()
    return [(e["action"], e["role"], e["fence"], e["outcome"]) for e in map(json.loads, lines)]


async def record_of(store: Store) -> FailureRecord | None:
    entry = await store.get(subjects.FAILURES_BUCKET, subjects.failure_key("web1"))
    return decode(entry.value, FailureRecord) if entry and entry.value else None


async def mesh_view(shop: Allocation, serving: InstanceStatus, failed: FailureRecord) -> MeshView:
    """master, web1 (failed) and web2, both serving `shop`: a ready view."""
    view = MeshView()
    await view.set_allocations({"shop.prod.backend": shop})
    nodes = {"master": node("master", 1), "web1": node("web1", 3, serving),
             "web2": node("web2", 1, serving)}  # fmt: skip
    await view.set_nodes(nodes)
    await view.set_failures({"web1": failed})
    await view.set_cards({name: factories.card(name) for name in nodes})
    return view


async def test_a_leader_that_dies_midway_is_followed_without_repeating_a_step(
    store: Store, provider: LocalProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    web1 = await provider.create("web1", "s-1vcpu-1gb", tags=[TAG], user_data="{}", fence=None)
    await provider.create("web2", "s-1vcpu-1gb", tags=[TAG], user_data="{}", fence=None)
    data = await provider.create_volume("test-web1-shop-prod-database", 1, fence=None)
    await provider.attach_volume(data.id, web1.id, fence=None)
    shop = allocation(droplets=("web1", "web2"), service_kind="web")
    serving = instance(generation=shop.generation)
    failed = FailureRecord(
        droplet="web1",
        confirmed_by=("master", "web2"),
        confirmed_at=time.time(),
        state=FailureState.CONFIRMED,
        fence=0,
        incarnation=3,
    )
    await store.create(subjects.FAILURES_BUCKET, subjects.failure_key("web1"), encode(failed))
    view = await mesh_view(shop, serving, failed)

    first = Recovery(store, provider, view, "master", TAG, user_data=lambda: NEW_USER_DATA)
    first_term = Term("recovery", fence=10, deadline=time.monotonic() + 60)
    await first.recover(first_term)  # confirmed -> fenced
    assert (fenced := await record_of(store)) is not None and fenced.volumes == (data.id,)
    assert [v.droplet_id for v in await provider.list_volumes()] == [None]
    await first.recover(first_term)  # fenced -> displaced
    displaced = await record_of(store)
    assert displaced is not None and displaced.state is FailureState.DISPLACED
    assert displaced.displaced == {"shop.prod.backend": "master"}
    assert displaced.droplet_id == web1.id

    # The first leader rebuilds, and dies before it can write that down.
    async def dies(*args: Any, **kwargs: Any) -> None:
        first_term.ended = True
        raise TermEnded("recovery lease lost")

    monkeypatch.setattr(first, "_advance", dies)
    with pytest.raises(TermEnded):
        await first.recover(first_term)
    assert (await record_of(store)) == displaced

    second = Recovery(store, provider, view, "web2", TAG)
    second_term = Term("recovery", fence=12, deadline=time.monotonic() + 60)
    await second.recover(second_term)
    recovering = await record_of(store)
    assert recovering is not None and recovering.state is FailureState.RECOVERING
    (replacement,) = [d for d in await provider.list(TAG) if d.name == "web1"]
    assert recovering.replacement_id == replacement.id != web1.id
    # Its user_data is the one the first leader made when it rebuilt (the JetStream servers
    # its agent used then), not the old droplet's.
    account = json.loads((tmp_path / "account" / "account.json").read_text())
    made = Path(account["droplets"][replacement.id]["dir"]) / "user_data"
    assert made.read_text() == NEW_USER_DATA
    assert recovering.fence == 12
    assert [v.droplet_id for v in await provider.list_volumes()] == [replacement.id]

    # Not healthy yet: the record stays. Reported healthy with a newer incarnation: it goes.
    await second.recover(second_term)
    assert (await record_of(store)) == recovering
    await view.set_nodes({**view.nodes, "web1": node("web1", 4, serving)})
    await second.recover(second_term)
    assert await record_of(store) is None

    assert actions(tmp_path) == [
        ("create", None, None, "done"),
        ("create", None, None, "done"),
        ("power_off", "recovery", 10, "done"),
        ("rebuild", "recovery", 10, "done"),
    ]
    # The dead leader's fence is refused now that a newer leader acted on the droplet.
    await provider.power_off(replacement.id, fence=Fence("recovery", 12))
    with pytest.raises(StaleFence):
        await provider.power_off(replacement.id, fence=Fence("recovery", 10))
