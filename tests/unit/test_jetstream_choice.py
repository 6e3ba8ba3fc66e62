"""Which droplets run JetStream (pure): master alone below three droplets, master and two
more from three on; sticky; rebuilt-rarely and roomy droplets first; never one that leaves."""

from __future__ import annotations

from meshd.core.jetstream import Candidate, Topology, candidates, choose
from meshd.core.placement import Droplet, Placement
from tests.support.factories import NOW, node


def mesh(*names: str) -> list[Candidate]:
    return [Candidate(n) for n in ("master", *names)]


def test_one_or_two_droplets_run_jetstream_on_master_alone_at_one_replica() -> None:
    assert choose(mesh()) == Topology(("master",))
    assert choose(mesh("web1")).replicas == 1
    assert choose(mesh("web1"), current=("master",)).servers == ("master",)


def test_a_third_droplet_makes_a_cluster_of_three_at_three_replicas() -> None:
    grown = choose(mesh("web1", "web2"), current=("master",))
    assert grown.servers == ("master", "web1", "web2")
    assert grown.replicas == 3 and grown.clustered


def test_the_choice_is_sticky_when_better_droplets_join() -> None:
    current = ("master", "web1", "web2")
    roomy = Candidate("web3", memory_free_mb=8000)
    assert choose([*mesh("web1", "web2"), roomy], current).servers == current


def test_droplets_rebuilt_rarely_and_with_memory_to_spare_are_preferred() -> None:
    candidates = [
        Candidate("master"),
        Candidate("a", replaced=3, memory_free_mb=4000),
        Candidate("b", replaced=0, memory_free_mb=100),
        Candidate("c", replaced=0, memory_free_mb=900),
        Candidate("d", replaced=1, memory_free_mb=9000),
    ]
    assert choose(candidates).servers == ("master", "b", "c")


def test_a_leaving_server_hands_its_place_to_another_droplet() -> None:
    current = ("master", "web1", "web2")
    candidates = [*mesh("web2", "web3"), Candidate("web1", leaving=True)]
    assert choose(candidates, current).servers == ("master", "web2", "web3")


def test_shrinking_below_three_droplets_goes_back_to_master_alone() -> None:
    current = ("master", "web1", "web2")
    candidates = [*mesh("web1"), Candidate("web2", leaving=True)]
    assert choose(candidates, current) == Topology(("master",))


def test_without_master_the_servers_that_run_stay() -> None:
    current = ("master", "web1", "web2")
    assert choose([Candidate("web1"), Candidate("web2")], current).servers == current


def placed(*names: str) -> Placement:
    return Placement(
        droplets=tuple(Droplet(n, "s-1vcpu-2gb") for n in ("master", *names)),
        instances=(),
        allocations=(),
    )


def test_candidates_are_the_live_droplets_and_the_servers_even_while_down() -> None:
    nodes = {
        "master": node("master"),
        "web1": node("web1", incarnation=4),
        "web2": node("web2", updated_at=NOW - 600),  # silent: not a candidate
        "web3": node("web3", updated_at=NOW - 600),  # silent, but a server: it stays one
        "web4": node("web4"),
    }
    found = candidates(nodes, None, current=("master", "web3"), failed={"web4"}, now=NOW)
    assert sorted(c.name for c in found) == ["master", "web1", "web3"]
    web1 = next(c for c in found if c.name == "web1")
    assert web1.replaced == 3 and web1.memory_free_mb > 0 and not web1.leaving


def test_a_droplet_the_placement_no_longer_has_is_leaving_but_master_and_drills_stay() -> None:
    nodes = {n: node(n) for n in ("master", "mesh-2", "web1", "old")}
    found = {c.name: c.leaving for c in candidates(nodes, placed("web1"), (), (), NOW)}
    assert found == {"master": False, "mesh-2": False, "web1": False, "old": True}
