"""Which servers hold a current copy of each stream, as `meshctl status` tells it: a rebuilt
server that is still catching up is named, one that has caught up is not."""

from __future__ import annotations

from meshd.agent.store.moves import current_copies
from meshd.cli.status import catching_up

SERVERS = ["master", "web1", "web2"]


def replica(name: str, current: bool) -> dict[str, object]:
    return {"name": name, "current": current, "active": 1000, "lag": 0 if current else 500}


def test_a_standalone_stream_is_current_on_its_one_server() -> None:
    assert current_copies({}, ["master"]) == ["master"]
    assert current_copies({"name": "moves-0"}, ["master"]) == ["master"]


def test_the_leader_and_current_replicas_hold_current_copies() -> None:
    cluster = {"leader": "web2", "replicas": [replica("master", True), replica("web1", False)]}
    assert current_copies(cluster, SERVERS) == ["master", "web2"]


def test_a_replica_a_few_writes_behind_and_heard_lately_counts_as_current() -> None:
    behind = {"name": "web1", "current": False, "active": 200_000_000, "lag": 3}
    far = {"name": "web2", "current": False, "active": 200_000_000, "lag": 5000}
    cluster = {"leader": "master", "replicas": [behind, far]}
    assert current_copies(cluster, SERVERS) == ["master", "web1"]
    silent = {**behind, "active": 30_000_000_000}
    assert current_copies({"leader": "master", "replicas": [silent]}, SERVERS) == ["master"]


def test_a_stream_without_a_leader_has_only_the_replicas_that_say_current() -> None:
    cluster = {"replicas": [replica("master", True), replica("web1", True)]}
    assert current_copies(cluster, SERVERS) == ["master", "web1"]


def test_status_names_the_servers_still_catching_up() -> None:
    view = {
        "servers": SERVERS,
        "streams": {
            "KV_mesh_nodes": {"replicas": 3, "current": ["master", "web2"]},
            "MESH_EVENTS": {"replicas": 3, "current": SERVERS},
        },
    }
    assert "catching up: web1" in catching_up(view)
    view["streams"]["KV_mesh_nodes"]["current"] = SERVERS
    assert catching_up(view) == ""
