"""Who rebuilds a dead master when JetStream ran on it alone, and from which snapshot."""

from __future__ import annotations

from meshd.watchers.rescue import newest_snapshots, rescues
from plugins.providers import SnapshotRecord
from protocol.messages import Snapshot


def test_the_first_other_droplet_in_ring_order_rescues_a_lone_master() -> None:
    assert rescues(["master"], "shop-web1", ["master", "shop-web1"])
    assert rescues(["master"], "a-web1", ["master", "shop-web1"])  # it knows itself
    assert not rescues(["master"], "shop-web2", ["master", "shop-web1", "shop-web2"])


def test_nobody_rescues_master_when_jetstream_is_clustered_nor_master_itself() -> None:
    assert not rescues(["master", "shop-web1", "shop-web2"], "shop-web1", ["shop-web1"])
    assert not rescues(["master"], "master", ["master", "shop-web1"])


def record(id_: str, name: str, at: float) -> SnapshotRecord:
    return SnapshotRecord(id_, name, "droplet-1", at, 1.0)


def remembered(id_: str, name: str) -> Snapshot:
    return Snapshot(id=id_, name=name, droplet_id="droplet-1", created_at=0.0,
                    generations={}, fence=1)  # fmt: skip


KEPT = [
    record("s1", "master-deploy-20261201-100000", 1.0),
    record("s2", "shop-web1-deploy-20261201-100100", 2.0),
    record("s3", "master-deploy-20261201-100200", 3.0),
]


def test_the_snapshots_the_index_named_come_first_if_the_provider_keeps_them() -> None:
    index = [remembered("gone", "master-deploy-x"), remembered("s1", "master-deploy-1")]
    assert [s.id for s in newest_snapshots(index, KEPT)] == ["s1"]


def test_without_an_index_the_newest_of_masters_own_snapshots_come_first() -> None:
    assert [s.id for s in newest_snapshots([], KEPT)] == ["s3", "s1"]
    assert newest_snapshots([], KEPT[1:2]) == []
