"""The pure parts of scheduling and observing: environments, allocations, status views."""

from __future__ import annotations

import dataclasses

from meshd.core.allocations import EnvMemo, allocations_for
from meshd.core.envvars import instance_environment, instance_hosts, resolve_hosts
from meshd.core.placement import place
from meshd.core.resources import allocate
from meshd.core.spec import ServiceKind
from meshd.core.status import converged, mesh_status, unconverged, unresized
from protocol.messages import InstanceState, InstanceStatus, Lease, NodeStatus
from tests.support import factories
from tests.support.factories import allocation, instance
from tests.support.states import config_from_json, seed_state, state_from_csv

SEED_VARIABLES = {
    "DB_USER", "DB_NAME", "DB_PORT", "REDIS_PORT", "VAULT_PORT", "OPENSEARCH_PORT",
    "OPENSEARCH_INDEX", "SERVICE_NAME", "ENVIRONMENT", "PROJECT", "ASSIGNED_DROPLETS",
    "RESOURCE_HASH",
}  # fmt: skip
HOST_VARIABLES = {"DB_HOST", "REDIS_HOST", "VAULT_HOST", "OPENSEARCH_HOST"}


def test_web_services_get_the_seed_variables_and_their_service_port() -> None:
    alloc = allocate([("hostomatic", "prod")])[("hostomatic", "prod")]
    env = instance_environment(alloc, "backend", ServiceKind.WEB, ["hostomatic-web1"])
    assert set(env) == SEED_VARIABLES | {"SERVICE_PORT"}
    assert env["SERVICE_PORT"] == str(alloc.ports["backend"])
    assert env["DB_NAME"] == alloc.db_name and env["DB_USER"] == alloc.db_user
    assert env["OPENSEARCH_INDEX"] == f"hostomatic-prod-logs-{alloc.hash[:6]}"


def test_workers_get_no_service_port() -> None:
    alloc = allocate([("hostomatic", "prod")])[("hostomatic", "prod")]
    env = instance_environment(alloc, "worker_email", ServiceKind.WORKER, ["hostomatic-web2"])
    assert "SERVICE_PORT" not in env


def test_host_variables_name_droplets_and_resolve_only_when_all_are_known() -> None:
    hosts = instance_hosts({"database": ["shop-web1"], "redis": ["shop-web1"]})
    assert set(hosts) == HOST_VARIABLES
    assert hosts["DB_HOST"] == "shop-web1" and hosts["VAULT_HOST"] == "master"
    assert resolve_hosts(hosts, {"master": "127.0.0.2"}) is None
    resolved = resolve_hosts(hosts, {"master": "127.0.0.2", "shop-web1": "127.0.0.3"})
    assert resolved == {
        "DB_HOST": "127.0.0.3",
        "REDIS_HOST": "127.0.0.3",
        "VAULT_HOST": "127.0.0.2",
        "OPENSEARCH_HOST": "127.0.0.2",
    }


def test_allocations_cover_every_service_and_carry_the_fence() -> None:
    state = seed_state()
    allocations = allocations_for(state, place(state), {}, fence=7)
    services = sum(len(p.services) for p in state.projects) * 3
    assert len(allocations) == services
    backend = allocations["hostomatic.prod.backend"]
    assert backend.droplets == ("hostomatic-web1", "hostomatic-web2", "hostomatic-web3")
    assert backend.generation == 1 and backend.fence == 7
    assert set(backend.hosts) == HOST_VARIABLES
    assert not HOST_VARIABLES & set(backend.env_vars)


def test_rescheduling_keeps_generations_and_bumps_only_what_changed() -> None:
    csv = "Project,Servers,MasterSpec,WebSpec\nshop,1,s-1vcpu-2gb,s-1vcpu-1gb\n"
    state = state_from_csv(csv)
    first = allocations_for(state, place(state), {}, fence=1)
    assert allocations_for(state, place(state), first, fence=2) == first
    changed = state_from_csv(
        csv, config_from_json('{"projects": {"shop": {"services": {"backend": {"image": "b:2"}}}}}')
    )
    second = allocations_for(changed, place(changed), first, fence=3)
    bumped = {k for k in second if second[k].generation != first[k].generation}
    assert bumped == {"shop.prod.backend", "shop.uat.backend", "shop.test.backend"}
    assert all(second[k].generation == 2 for k in bumped)


def test_a_new_backup_schedule_reaches_the_datastores_without_a_new_generation() -> None:
    csv = "Project,Servers,MasterSpec,WebSpec\nshop,1,s-1vcpu-2gb,s-1vcpu-1gb\n"
    state = state_from_csv(csv)
    first = allocations_for(state, place(state), {}, fence=1)
    assert {(a.backup_every_s, a.backup_keep_s) for a in first.values()} == {(None, None)}
    config = '{"projects": {"shop": {"backups": {"every_hours": 1, "keep_days": 30}}}}'
    scheduled = state_from_csv(csv, config_from_json(config))
    second = allocations_for(scheduled, place(scheduled), first, fence=2)
    changed = {k for k in second if second[k] != first[k]}
    datastores = {f"shop.{e}.{s}" for e in ("prod", "uat", "test") for s in ("database", "redis")}
    assert changed == datastores  # rewritten, nothing else
    assert all(second[k].generation == first[k].generation for k in second)  # none restarts
    assert {(second[k].backup_every_s, second[k].backup_keep_s) for k in datastores} == {
        (3600.0, 30 * 86400.0)
    }
    assert allocations_for(scheduled, place(scheduled), second, fence=3) == second
    assert allocations_for(state, place(state), second, fence=4) == {
        k: dataclasses.replace(a, fence=4) if k in datastores else a for k, a in first.items()
    }  # back to the seed's, still the same generations


def node(name: str, updated_at: float, *instances: InstanceStatus) -> NodeStatus:
    return factories.node(name, *instances, address="127.0.0.2", updated_at=updated_at)


def test_status_counts_only_healthy_instances_of_the_current_generation_on_live_droplets() -> None:
    now = 1000.0
    crashed = instance(healthy=False, state=InstanceState.CRASHED, last_error="exit code 1")
    nodes = {
        "master": node("master", now - 1, instance()),
        "web1": node("web1", now - 1, instance(generation=1)),  # old generation
        "web2": node("web2", now - 600, instance()),  # silent for ten minutes (nobody watches)
        "web3": node("web3", now - 1, crashed),
    }
    allocations = {
        "a": allocation(droplets=("master", "web1", "web2", "web3"), port=8000, command="run")
    }
    leases = {"scheduler": Lease(role="scheduler", holder="web1", incarnation=1, acquired_at=0)}
    view = mesh_status(nodes, allocations, leases, now)
    (backend,) = view["services"]
    assert (backend["healthy"], backend["desired"]) == (1, 4)
    assert backend["errors"] == ["web3: exit code 1"]
    droplets = {d["name"]: d for d in view["droplets"]}
    assert droplets["web1"]["roles"] == ["scheduler"]
    assert not droplets["web2"]["healthy"]
    assert [d["name"] for d in view["droplets"]][0] == "master"
    assert not converged(view)
    assert unconverged(view) == [
        f"{backend['project']} {backend['env']} {backend['service']}: 1/4 healthy"
        " (web3: exit code 1)"
    ]
    healed = dataclasses.replace(nodes["web3"], instances=(instance(),))
    assert not converged(mesh_status({**nodes, "web3": healed}, allocations, leases, now))


def test_a_droplet_whose_failure_is_confirmed_is_not_healthy_however_recent_its_report() -> None:
    now = 1000.0
    nodes = {"master": node("master", now - 1), "web1": node("web1", now - 1, instance())}
    allocations = {"a": allocation(droplets=("web1",), port=8000, command="run")}
    view = mesh_status(nodes, allocations, {}, now, {"web1": factories.failure("web1")})
    assert [(d["name"], d["healthy"]) for d in view["droplets"]] == [
        ("master", True),
        ("web1", False),
    ]
    assert view["services"][0]["healthy"] == 0


def test_a_service_awaiting_its_first_deploy_is_shown_so_and_not_waited_for() -> None:
    now = 1000.0
    waiting = allocation(droplets=("master",), port=8000, command=None)
    waiting = dataclasses.replace(waiting, build_context="app")  # in the repository only
    nodes = {"master": node("master", now - 1)}
    view = mesh_status(nodes, {"a": waiting}, {}, now)
    (backend,) = view["services"]
    assert backend["awaiting_deploy"] and backend["healthy"] == 0
    assert converged(view)
    released = dataclasses.replace(waiting, artifact="d" * 64, release=1)
    view = mesh_status(nodes, {"a": released}, {}, now)
    assert not view["services"][0]["awaiting_deploy"] and not converged(view)
    on_disk = dataclasses.replace(waiting, build_context="/home/ana/shop/app")
    assert not converged(mesh_status(nodes, {"a": on_disk}, {}, now))


def test_a_mesh_waits_for_its_droplets_sizes_but_a_lone_droplet_is_not_waited_for() -> None:
    now = 1000.0
    nodes = {name: dataclasses.replace(node(name, now - 1), size="s-1vcpu-1gb")
             for name in ("master", "web1")}  # fmt: skip
    view = mesh_status(nodes, {}, {}, now)
    wanted = {"master": "s-2vcpu-4gb", "web1": "s-1vcpu-1gb"}
    assert unresized(wanted, view) == ["master: s-1vcpu-1gb, to become s-2vcpu-4gb"]
    grown = {**nodes, "master": dataclasses.replace(nodes["master"], size="s-2vcpu-4gb")}
    assert unresized(wanted, mesh_status(grown, {}, {}, now)) == []
    # Alone, master waits for company to resize it (DigitalOcean powers it off): not now.
    alone = mesh_status({"master": nodes["master"]}, {}, {}, now)
    assert unresized({"master": "s-2vcpu-4gb"}, alone) == []


def test_a_pass_with_a_memo_builds_only_the_environments_whose_inputs_changed() -> None:
    rows = "shop,1,s-2vcpu-4gb,s-1vcpu-1gb\nblog,1,s-2vcpu-4gb,s-1vcpu-1gb\n"
    csv = "Project,Servers,MasterSpec,WebSpec\n" + rows
    state = state_from_csv(csv)
    memo: EnvMemo = {}
    first = allocations_for(state, place(state), {}, 1, memo=memo)
    assert first == allocations_for(state, place(state), {}, 1)  # the memo changes nothing
    again = allocations_for(state, place(state), first, 1, memo=memo)
    assert all(again[k] is first[k] for k in first)  # nothing built again

    changed = state_from_csv(
        csv, config_from_json('{"projects": {"shop": {"services": {"backend": {"image": "b:2"}}}}}')
    )
    placement = place(changed, place(state))
    third = allocations_for(changed, placement, again, 2, {"blog.uat.backend": 1}, memo=memo)
    assert third == allocations_for(changed, placement, again, 2, {"blog.uat.backend": 1})
    rebuilt = {k for k in third if third[k] is not again[k]}
    assert {k.rsplit(".", 1)[0] for k in rebuilt} == {"shop.prod", "shop.uat", "shop.test",
                                                       "blog.uat"}  # fmt: skip
    assert third["blog.uat.backend"].generation == again["blog.uat.backend"].generation + 1

    alone = state_from_csv("Project,Servers,MasterSpec,WebSpec\nblog,1,s-2vcpu-4gb,s-1vcpu-1gb\n")
    allocations_for(alone, place(alone), third, 3, memo=memo)
    assert {project for project, _ in memo} == {"blog"}  # a project gone leaves the memo
