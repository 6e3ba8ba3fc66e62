"""Who watches whom (pure): M = min(3, N-1) monitors per droplet, master first, then the
droplets after the target in the ring; a majority of them confirms a failure; which
suspicions `meshctl status` shows."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from meshd.core.monitors import MASTER_WATCHES_UP_TO, majority, monitor_map, ring, targets_of
from meshd.core.status import open_suspicions
from protocol.messages import Event


def test_master_and_the_next_droplets_in_the_ring_watch_each_droplet() -> None:
    members = ["web-b", "master", "web-a", "web-c", "web-d"]
    assert ring(members) == ["master", "web-a", "web-b", "web-c", "web-d"]
    monitors = monitor_map(members)
    assert monitors["web-a"] == ("master", "web-b", "web-c")
    assert monitors["web-d"] == ("master", "web-a", "web-b")  # the ring wraps past master
    assert monitors["master"] == ("web-a", "web-b", "web-c")
    assert targets_of("master", monitors) == ["web-a", "web-b", "web-c", "web-d"]


def test_small_meshes_have_fewer_monitors() -> None:
    assert monitor_map(["master"]) == {"master": ()}
    assert monitor_map(["master", "web"]) == {"master": ("web",), "web": ("master",)}
    three = monitor_map(["master", "a", "b"])
    assert three == {"master": ("a", "b"), "a": ("master", "b"), "b": ("master", "a")}


def test_a_failure_needs_more_than_half_of_the_monitors() -> None:
    assert [majority(m) for m in (1, 2, 3)] == [1, 2, 2]


def test_beyond_ten_droplets_master_watches_only_its_ring_predecessors_as_anyone() -> None:
    members = ["master", *(f"web{n:02d}" for n in range(1, 30))]
    monitors = monitor_map(members)
    assert monitors["web05"] == ("web06", "web07", "web08")
    assert monitors["web29"] == ("master", "web01", "web02")  # the ring wraps past master
    watched = {name: len(targets_of(name, monitors)) for name in members}
    assert set(watched.values()) == {3}  # master as much as anyone
    assert len(monitor_map(members[:10])["web05"]) == 3
    assert monitor_map(members[:10])["web05"][0] == "master"  # the seed's way up to ten


names = st.lists(st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True), unique=True, max_size=12)


@given(names, st.booleans())
def test_every_droplet_gets_min_3_n_minus_1_distinct_monitors_never_itself(
    others: list[str], with_master: bool
) -> None:
    members = [*others, "master"] if with_master else others
    monitors = monitor_map(members)
    count = len(set(members))
    for target, chosen in monitors.items():
        assert len(chosen) == min(3, count - 1)
        assert len(set(chosen)) == len(chosen)
        assert target not in chosen
        if with_master and target != "master" and count <= MASTER_WATCHES_UP_TO:
            assert chosen[0] == "master"


def event(name: str, subject: str, actor: str, at: float) -> Event:
    return Event(name=name, actor=actor, subject=subject, at=at)


def test_open_suspicions_are_those_not_refuted_nor_confirmed_in_the_last_minute() -> None:
    now = 1000.0
    events = [
        event("droplet_suspected", "old", "master", now - 120),  # too long ago
        event("droplet_suspected", "web-a", "master", now - 5),
        event("droplet_suspected", "web-a", "web-c", now - 4),
        event("droplet_suspected", "web-b", "master", now - 9),
        event("suspicion_refuted", "web-b", "web-b", now - 8),  # it answered
        event("droplet_suspected", "web-d", "master", now - 7),
        event("failure_confirmed", "web-d", "web-a", now - 6),  # now a failure instead
    ]
    assert open_suspicions(events, now) == [
        {"droplet": "web-a", "by": ["master", "web-c"], "since": now - 5, "age_s": 5.0}
    ]
