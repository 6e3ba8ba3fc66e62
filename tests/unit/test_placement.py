"""Placement: which droplets exist and which droplet runs which instance."""

from __future__ import annotations

from collections import defaultdict

import pytest

from meshd.core.errors import CapacityError
from meshd.core.placement import Placement, desired_droplets, place
from meshd.core.sizes import SIZES
from tests.support.states import config_from_json, seed_state, state_from_csv

HEADER = "Project,Servers,MasterSpec,WebSpec\n"


def where(placement: Placement) -> dict[tuple[str, str, str], list[str]]:
    result: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for instance in placement.instances:
        result[instance.service_key].append(instance.droplet)
    return result


def test_seed_csv_gets_the_largest_master_and_three_hostomatic_droplets() -> None:
    droplets = {d.name: d.size for d in place(seed_state()).droplets}
    assert droplets == {
        "master": "s-8vcpu-16gb",
        "hostomatic-web1": "s-2vcpu-4gb",
        "hostomatic-web2": "s-2vcpu-4gb",
        "hostomatic-web3": "s-2vcpu-4gb",
    }


def test_seed_csv_puts_hostomatic_prod_web_services_on_every_dedicated_droplet() -> None:
    placed = where(place(seed_state()))
    web = ["hostomatic-web1", "hostomatic-web2", "hostomatic-web3"]
    assert placed[("hostomatic", "prod", "backend")] == web
    assert placed[("hostomatic", "prod", "frontend")] == web
    assert placed[("hostomatic", "prod", "database")] == ["hostomatic-web1"]
    assert placed[("hostomatic", "prod", "redis")] == ["hostomatic-web1"]


def test_seed_csv_spreads_prod_workers_round_robin_in_config_order() -> None:
    placed = where(place(seed_state()))
    assert placed[("hostomatic", "prod", "worker_email")] == ["hostomatic-web1"]
    assert placed[("hostomatic", "prod", "worker_reports")] == ["hostomatic-web2"]
    assert placed[("hostomatic", "prod", "scheduler")] == ["hostomatic-web3"]


def test_seed_csv_puts_small_projects_and_hostomatic_uat_and_test_on_master() -> None:
    placed = where(place(seed_state()))
    on_master = {key for key, droplets in placed.items() if droplets == ["master"]}
    for project in ("digitalpixo", "newstartup"):
        for env in ("prod", "uat", "test"):
            for service in ("backend", "frontend", "database", "redis"):
                assert (project, env, service) in on_master
    for env in ("uat", "test"):
        for service in ("backend", "frontend", "database", "redis", "worker_email", "scheduler"):
            assert ("hostomatic", env, service) in on_master


def test_web_services_and_datastores_get_their_family_port_and_workers_none() -> None:
    placement = place(seed_state())
    allocations = placement.resources_by_env()
    for instance in placement.instances:
        ports = allocations[(instance.project, instance.env)].ports
        assert instance.port == ports.get(instance.service)
        if instance.service.startswith(("worker", "scheduler")):
            assert instance.port is None


def test_master_size_is_the_largest_by_memory_then_vcpus() -> None:
    state = state_from_csv(HEADER + "a,1,s-2vcpu-2gb,s-1vcpu-1gb\nb,1,s-1vcpu-2gb,s-1vcpu-1gb\n")
    assert desired_droplets(state)[0].size == "s-2vcpu-2gb"


def test_one_server_project_runs_everything_on_master() -> None:
    placement = place(state_from_csv(HEADER + "solo,1,s-1vcpu-1gb,s-1vcpu-1gb\n"))
    assert {d.name for d in placement.droplets} == {"master"}
    assert {i.droplet for i in placement.instances} == {"master"}
    assert len(placement.instances) == 12


def test_default_services_of_one_project_fit_a_six_dollar_droplet() -> None:
    placement = place(state_from_csv(HEADER + "solo,1,s-1vcpu-1gb,s-1vcpu-1gb\n"))
    used = sum(i.memory_mb for i in placement.instances)
    assert used <= SIZES["s-1vcpu-1gb"].allocatable_mb


def test_plan_that_does_not_fit_is_refused_with_droplet_needed_and_free_memory() -> None:
    config = config_from_json(
        '{"projects": {"big": {"services": {"backend": {"memory_mb": 4096}}}}}'
    )
    state = state_from_csv(HEADER + "big,2,s-1vcpu-1gb,s-1vcpu-2gb\n", config)
    with pytest.raises(CapacityError) as caught:
        place(state)
    overcommits = {o.droplet: o for o in caught.value.overcommits}
    assert set(overcommits) == {"master", "big-web1"}
    assert overcommits["big-web1"].free_mb == 2048 - 256
    # backend 4096 and frontend 32 on every web droplet; prod database 96 and redis 32 on web1
    assert overcommits["big-web1"].needed_mb == 4096 + 32 + 96 + 32
    assert "big-web1" in str(caught.value) and "MB free" in str(caught.value)


def test_placement_round_trips_through_plain_data() -> None:
    placement = place(seed_state())
    assert Placement.from_data(placement.to_data()) == placement


def test_previous_allocations_are_kept_when_a_project_is_added() -> None:
    before = place(seed_state())
    grown = state_from_csv(
        HEADER
        + "digitalpixo,1,s-2vcpu-4gb,s-1vcpu-1gb\nhostomatic,4,s-8vcpu-16gb,s-2vcpu-4gb\n"
        + "newstartup,1,s-1vcpu-1gb,s-1vcpu-1gb\naaa-first,1,s-1vcpu-1gb,s-1vcpu-1gb\n"
    )
    after = place(grown, previous=before)
    old = before.resources_by_env()
    new = after.resources_by_env()
    for key, alloc in old.items():
        assert new[key] == alloc
