"""Which droplets run JetStream (pure): master alone below three droplets, master and two
more from three on; sticky; rebuilt-rarely and roomy droplets first; never one that leaves."""

from __future__ import annotations

from meshd.core.jetstream import Candidate, Topology, choose


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
