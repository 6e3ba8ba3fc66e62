"""Post-deployment snapshots: when a droplet has settled and needs one, which ones go (pure),
and on a real local mesh: every deployment a droplet finishes is snapshotted, the last three
are kept, and a killed droplet is rebuilt from the newest."""

from __future__ import annotations

from typing import Any

from meshd.core.snapshot_policy import RETRY_CAP_S, due, pruned, retry_after, settled, snapshot_name
from protocol.messages import (
    Allocation,
    InstanceState,
    InstanceStatus,
    NodeStatus,
    Snapshot,
    SnapshotIndex,
)
from tests.support import factories
from tests.support.reconciling import allocation


def instance(service: str, generation: int, **more: Any) -> InstanceStatus:
    return factories.instance(
        service=service, generation=generation, state=InstanceState.RUNNING, **more
    )


def node(*instances: InstanceStatus) -> NodeStatus:
    return factories.node("web1", *instances, updated_at=0.0)


def snapshot(generations: dict[str, int], number: int = 1) -> Snapshot:
    return Snapshot(
        id=str(number),
        name=f"web1-deploy-{number}",
        droplet_id="3",
        created_at=float(number),
        generations=generations,
        fence=1,
    )


ALLOCATIONS: dict[str, Allocation] = {
    "shop.prod.backend": allocation(service="backend", generation=2, droplets=("web1", "web2")),
    "shop.prod.worker": allocation(service="worker", generation=5, droplets=("web1",)),
    "shop.prod.other": allocation(service="other", generation=1, droplets=("web2",)),
}


def test_a_droplet_settles_when_each_of_its_services_runs_healthy_at_its_generation() -> None:
    whole = node(instance("backend", 2), instance("worker", 5))
    assert settled("web1", ALLOCATIONS, whole) == {"shop.prod.backend": 2, "shop.prod.worker": 5}
    not_yet = [
        node(instance("backend", 2)),  # the worker is missing
        node(instance("backend", 1), instance("worker", 5)),  # an old generation
        node(instance("backend", 2, healthy=False), instance("worker", 5)),
        node(instance("backend", 2), instance("worker", 5, draining=True)),
        # a rollout under way: old and new instance side by side
        node(instance("backend", 2), instance("backend", 1, slot=1), instance("worker", 5)),
    ]
    assert [settled("web1", ALLOCATIONS, n) for n in not_yet] == [None] * len(not_yet)
    assert settled("web3", ALLOCATIONS, node()) == {}  # nothing to run: its store still counts


def test_a_snapshot_is_due_when_the_newest_ran_other_generations() -> None:
    now = {"shop.prod.backend": 2}
    assert due(now, None)
    assert due(now, SnapshotIndex(droplet="web1", snapshots=()))
    newest_first = (snapshot(now, 2), snapshot({"shop.prod.backend": 1}, 1))
    assert not due(now, SnapshotIndex(droplet="web1", snapshots=newest_first))
    assert due({"shop.prod.backend": 3}, SnapshotIndex(droplet="web1", snapshots=newest_first))


def test_all_but_the_newest_three_are_pruned_and_names_follow_the_seed() -> None:
    index = SnapshotIndex(droplet="web1", snapshots=tuple(snapshot({}, n) for n in (5, 4, 3, 2, 1)))
    assert [s.id for s in pruned(index)] == ["2", "1"]
    assert pruned(SnapshotIndex(droplet="web1", snapshots=index.snapshots[:3])) == ()
    assert snapshot_name("web1", 1_795_767_107.9) == "web1-deploy-20261127-081147"


# --- on a real local mesh ---------------------------------------------------------------------


def test_a_failed_snapshot_is_tried_again_soon_then_less_often() -> None:
    waits = [retry_after(n) for n in range(1, 8)]
    assert waits[0] <= 5.0  # one failure (a file moved mid-copy) costs seconds, not a minute
    assert waits == sorted(waits)
    assert waits[-1] == RETRY_CAP_S
