"""Plans: the difference between two placements."""

from __future__ import annotations

from meshd.core.placement import place
from meshd.core.plan import DropletAction, InstanceAction, make_plan
from meshd.inputs.deploy_config import DeployConfig
from tests.support.states import EXAMPLES, config_from_json, seed_state, state_from_csv

HEADER = "Project,Servers,MasterSpec,WebSpec\n"


def actions(plan_instances: object) -> dict[str, int]:
    counts: dict[str, int] = {}
    for change in plan_instances:  # type: ignore[attr-defined]
        counts[change.action.value] = counts.get(change.action.value, 0) + 1
    return counts


def test_first_publish_creates_every_droplet_and_starts_every_instance() -> None:
    placement = place(seed_state())
    plan = make_plan(None, placement)
    assert {d.action for d in plan.droplets} == {DropletAction.CREATE}
    assert {i.action for i in plan.instances} == {InstanceAction.START}
    assert len(plan.instances) == len(placement.instances)
    assert plan.monthly_usd == 96 + 3 * 24
    assert plan.previous_monthly_usd == 0


def test_republishing_the_same_state_changes_nothing() -> None:
    placement = place(seed_state())
    plan = make_plan(placement, place(seed_state(), previous=placement))
    assert not plan.changes
    assert {i.action for i in plan.instances} == {InstanceAction.KEEP}


def test_scale_out_from_one_to_four_servers_creates_three_droplets_and_moves_prod() -> None:
    before = place(state_from_csv(HEADER + "hostomatic,1,s-4vcpu-8gb,s-2vcpu-4gb\n"))
    after = place(state_from_csv(HEADER + "hostomatic,4,s-4vcpu-8gb,s-2vcpu-4gb\n"), before)
    plan = make_plan(before, after)
    created = sorted(d.name for d in plan.droplets if d.action is DropletAction.CREATE)
    assert created == ["hostomatic-web1", "hostomatic-web2", "hostomatic-web3"]
    backend = [c for c in plan.instances if c.service == "backend" and c.env == "prod"]
    assert [(c.action, c.from_droplet, c.droplet) for c in backend] == [
        (InstanceAction.MOVE, "master", "hostomatic-web1"),
        (InstanceAction.START, None, "hostomatic-web2"),
        (InstanceAction.START, None, "hostomatic-web3"),
    ]
    assert all(c.action is InstanceAction.KEEP for c in plan.instances if c.env != "prod")


def test_scale_in_destroys_droplets_and_stops_their_instances() -> None:
    before = place(state_from_csv(HEADER + "hostomatic,3,s-4vcpu-8gb,s-2vcpu-4gb\n"))
    after = place(state_from_csv(HEADER + "hostomatic,2,s-4vcpu-8gb,s-2vcpu-4gb\n"), before)
    plan = make_plan(before, after)
    assert [(d.name, d.action) for d in plan.droplets if d.action is not DropletAction.KEEP] == [
        ("hostomatic-web2", DropletAction.DESTROY)
    ]
    stopped = {(c.service, c.droplet) for c in plan.instances if c.action is InstanceAction.STOP}
    assert stopped == {("backend", "hostomatic-web2"), ("frontend", "hostomatic-web2")}


def test_scale_up_resizes_master() -> None:
    before = place(state_from_csv(HEADER + "hostomatic,1,s-4vcpu-8gb,s-2vcpu-4gb\n"))
    after = place(state_from_csv(HEADER + "hostomatic,1,s-8vcpu-16gb,s-2vcpu-4gb\n"), before)
    plan = make_plan(before, after)
    assert [(d.name, d.action, d.previous_size) for d in plan.droplets] == [
        ("master", DropletAction.RESIZE, "s-4vcpu-8gb")
    ]
    assert not any(i.action is not InstanceAction.KEEP for i in plan.instances)


def test_changing_a_service_image_restarts_only_that_service() -> None:
    csv = HEADER + "shop,1,s-1vcpu-2gb,s-1vcpu-1gb\n"
    before = place(state_from_csv(csv))
    config = config_from_json(
        '{"projects": {"shop": {"services": {"backend": {"image": "shop:2"}}}}}'
    )
    after = place(state_from_csv(csv, config), before)
    restarted = {
        (c.env, c.service)
        for c in make_plan(before, after).instances
        if c.action is InstanceAction.RESTART
    }
    assert restarted == {("prod", "backend"), ("uat", "backend"), ("test", "backend")}


def test_removing_a_project_stops_its_instances_and_keeps_other_ports() -> None:
    before = place(seed_state())
    seed_config = config_from_json((EXAMPLES / "deployment_config.json").read_text())
    config = DeployConfig(seed_config.platform, {"hostomatic": seed_config.projects["hostomatic"]})
    csv = HEADER + "hostomatic,4,s-8vcpu-16gb,s-2vcpu-4gb\nnewstartup,1,s-1vcpu-1gb,s-1vcpu-1gb\n"
    after = place(state_from_csv(csv, config), before)
    plan = make_plan(before, after)
    stopped = {c.project for c in plan.instances if c.action is InstanceAction.STOP}
    assert stopped == {"digitalpixo"}
    assert {a.project for a in plan.allocations} == {"hostomatic", "newstartup"}
    kept = {a.key: a for a in before.allocations if a.project != "digitalpixo"}
    assert {a.key: a for a in plan.allocations} == kept


def test_plan_json_has_the_documented_shape() -> None:
    document = make_plan(None, place(seed_state())).to_json()
    assert set(document) == {"droplets", "instances", "allocations", "cost"}
    assert set(document["droplets"][0]) == {"name", "size", "action"}
    assert set(document["instances"][0]) == {
        "project",
        "env",
        "service",
        "droplet",
        "port",
        "action",
    }
    assert set(document["allocations"][0]) == {
        "project",
        "env",
        "hash",
        "ports",
        "db_name",
        "db_user",
    }
    assert set(document["allocations"][0]["ports"]) == {"backend", "frontend", "database", "redis"}
    assert document["cost"]["monthly_usd"] == 168.0
    workers = [i for i in document["instances"] if i["service"] == "worker_email"]
    assert workers and all(i["port"] is None for i in workers)


def test_the_first_publish_resizes_the_master_that_up_made_and_creates_the_rest() -> None:
    new = place(seed_state())
    plan = make_plan(None, new, {"master": "s-1vcpu-1gb", "mesh-2": "s-1vcpu-1gb"})
    actions = {d.name: d.action for d in plan.droplets}
    assert actions["master"] is DropletAction.RESIZE
    assert {a for n, a in actions.items() if n != "master"} == {DropletAction.CREATE}
    assert "mesh-2" not in actions  # a drill droplet is neither planned nor destroyed
    master = next(d for d in new.droplets if d.name == "master")
    same = make_plan(None, new, {"master": master.size})
    assert {d.name: d.action for d in same.droplets}["master"] is DropletAction.KEEP
