"""Replacing instances without losing a request: which services start beside the old
instance, how droplets take turns (pure), and the reconciler's side of it with real processes:
the new generation starts in the other slot on the spare port, the old one serves until the new
one is healthy, then drains and stops once its draining was reported."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import aiohttp
import pytest

import meshd.agent.reconciler
from meshd.agent.reconciler import Reconciler
from protocol.messages import InstanceState, InstanceStatus, NodeStatus
from tests.support import free_port
from tests.support.mesh import HELLO
from tests.support.reconciling import ADDRESS, allocation, publish_status, served
from tests.support.waiting import until

NOW = 1_000_000.0


def instance(generation: int, healthy: bool = True, **more: Any) -> InstanceStatus:
    return InstanceStatus(
        project="shop",
        env="prod",
        service="backend",
        state=InstanceState.RUNNING if healthy else InstanceState.STARTING,
        healthy=healthy,
        restarts=0,
        generation=generation,
        **more,
    )


def node(name: str, *instances: InstanceStatus, age: float = 1.0) -> NodeStatus:
    return NodeStatus(
        droplet=name,
        address="10.0.0.1",
        incarnation=1,
        size="s-1vcpu-1gb",
        roles=(),
        instances=instances,
        updated_at=NOW - age,
    )


async def test_a_new_generation_serves_before_the_old_one_drains_and_stops(
    reconciler: Reconciler, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(meshd.agent.reconciler, "DRAIN_S", 0.5)
    port, spare = free_port(), free_port()
    first = allocation(generation=1, droplets=("web1",), port=port, spare_port=spare)
    await reconciler.apply({"shop.prod.backend": first})
    await until(lambda: served(reconciler) == [port], "the first generation to serve")

    failures: list[str] = []
    requests = 0
    stop = asyncio.Event()

    async def clients() -> None:
        """What a load balancer does: send each request to an instance it was told of."""
        nonlocal requests
        async with aiohttp.ClientSession() as http:
            while not stop.is_set():
                for target in served(reconciler):
                    requests += 1
                    try:
                        async with http.get(f"http://{ADDRESS}:{target}/") as reply:
                            if reply.status != 200:
                                failures.append(f"{target}: {reply.status}")
                    except aiohttp.ClientError as err:
                        failures.append(f"{target}: {err}")
                await asyncio.sleep(0.01)

    load = asyncio.create_task(clients())
    await reconciler.apply(
        {
            "shop.prod.backend": allocation(
                generation=2, droplets=("web1",), port=port, spare_port=spare
            )
        }
    )

    # Both run, the old one serves until the new one passes its health check ...
    await until(lambda: len(reconciler.statuses()) == 2, "the new instance beside the old")
    await until(lambda: served(reconciler) == [spare], "the switch to the new instance")
    old = next(s for s in reconciler.statuses() if s.slot == 0)
    assert (old.generation, old.draining) == (1, True)
    # ... and it stops only after its draining was reported (the load balancer learnt it).
    await asyncio.sleep(1.0)
    assert len(reconciler.statuses()) == 2
    publish_status(reconciler)
    await until(lambda: len(reconciler.statuses()) == 1, "the old instance to stop")
    stop.set()
    await load

    (new,) = reconciler.statuses()
    assert (new.slot, new.port, new.generation, new.healthy) == (1, spare, 2, True)
    assert sorted(i.key for i in await reconciler.runtime.list()) == ["shop.prod.backend.1"]
    assert requests > 20
    assert failures == []


async def test_a_replacement_that_never_gets_healthy_leaves_the_old_instance_serving(
    reconciler: Reconciler,
) -> None:
    port, spare = free_port(), free_port()
    first = allocation(generation=1, droplets=("web1",), port=port, spare_port=spare)
    await reconciler.apply({"shop.prod.backend": first})
    await until(lambda: served(reconciler) == [port], "the first generation to serve")

    broken = allocation(
        generation=2,
        droplets=("web1",),
        port=port,
        spare_port=spare,
        command=f"{sys.executable} {HELLO} --hang",
    )
    await reconciler.apply({"shop.prod.backend": broken})
    await until(lambda: len(reconciler.statuses()) == 2, "the new instance beside the old")
    await until(
        lambda: reconciler.tracked["shop.prod.backend.1"].failed_probes >= 1,
        "the replacement judged by a failed health check",
        timeout=30,
    )
    assert served(reconciler) == [port]
    old = next(s for s in reconciler.statuses() if s.slot == 0)
    assert (old.generation, old.healthy, old.draining) == (1, True, False)


async def test_a_rollout_that_overtakes_the_one_before_serves_from_the_drained_slot(
    reconciler: Reconciler,
) -> None:
    """Generation 3 arrives while generation 1 still drains beside a healthy 2 (two quick
    changes in a row): 3 starts in the drained slot and serves, nothing stays draining."""
    port, spare = free_port(), free_port()
    first = allocation(generation=1, droplets=("web1",), port=port, spare_port=spare)
    await reconciler.apply({"shop.prod.backend": first})
    # Serving first: a generation 1 not started yet is replaced in its slot, not drained (on
    # a loaded machine generation 2 came before 1 had started, and the test saw no drain).
    await until(lambda: served(reconciler) == [port], "generation 1 serving")
    second = allocation(generation=2, droplets=("web1",), port=port, spare_port=spare)
    await reconciler.apply({"shop.prod.backend": second})
    await until(lambda: served(reconciler) == [spare], "generation 2 serving, 1 draining")
    assert next(s for s in reconciler.statuses() if s.slot == 0).draining

    third = allocation(generation=3, droplets=("web1",), port=port, spare_port=spare)
    await reconciler.apply({"shop.prod.backend": third})
    await until(lambda: served(reconciler) == [port], "generation 3 serving", timeout=30)
    publish_status(reconciler)
    await until(lambda: len(reconciler.statuses()) == 1, "generation 2 stopped", timeout=30)
    (new,) = reconciler.statuses()
    assert (new.slot, new.generation, new.healthy, new.draining) == (0, 3, True, False)
