"""The DigitalOcean stand-in's firewalls, volumes, images and snapshots: their limits and
refusals as DigitalOcean's, the policies firewalls resolve to, volume actions on the clock,
and every answer in the shapes the API description allows (the `stand` fixture checks)."""

from __future__ import annotations

from typing import Any

from sim.digitalocean.clock import Clock
from sim.digitalocean.firewalls import policies
from sim.digitalocean.machines import FirewallPolicy, FirewallRule, NoMachines
from sim.digitalocean.world import World
from tests.support import digitalocean
from tests.support.digitalocean import Stand

DROPLET = {"region": "nyc3", "size": "s-1vcpu-1gb", "image": "debian-12-x64"}
SSH_IN = {"protocol": "tcp", "ports": "22", "sources": {"addresses": ["0.0.0.0/0"]}}
ALL_OUT = {"protocol": "tcp", "ports": "all", "destinations": {"addresses": ["0.0.0.0/0"]}}


async def ok(stand: Stand, method: str, path: str, body: Any = None, status: int = 200) -> Any:
    got, _, data = await stand.raw(method, path, body)
    assert got == status, (method, path, got, data)
    return data


async def refused(stand: Stand, method: str, path: str, body: Any = None) -> tuple[int, str]:
    before = len(stand.invalid())
    status, _, data = await stand.raw(method, path, body)
    assert status >= 400, (method, path, status, data)
    assert len(stand.invalid()) == before, "refused by the description, not by the handler"
    return status, data["message"]


async def droplets(stand: Stand, *names: str, **extra: Any) -> list[int]:
    """Droplets made through the API, active (their boot delay passed)."""
    made = await ok(stand, "POST", "/v2/droplets", {"names": list(names), **DROPLET, **extra}, 202)
    await stand.advance(60)
    return [d["id"] for d in made["droplets"]]


# Firewalls --------------------------------------------------------------------------------


async def test_a_firewall_is_made_read_listed_replaced_whole_and_deleted(stand: Stand) -> None:
    [web] = await droplets(stand, "web-1")
    await ok(stand, "POST", "/v2/tags", {"name": "mesh"}, 201)
    made = await ok(
        stand,
        "POST",
        "/v2/firewalls",
        {
            "name": "mesh-fw",
            "inbound_rules": [SSH_IN],
            "outbound_rules": [ALL_OUT],
            "droplet_ids": [web],
            "tags": ["mesh"],
        },
        202,
    )
    firewall = made["firewall"]
    assert (firewall["status"], firewall["pending_changes"]) == ("succeeded", [])
    assert (firewall["droplet_ids"], firewall["tags"]) == ([web], ["mesh"])
    path = f"/v2/firewalls/{firewall['id']}"
    assert (await ok(stand, "GET", path))["firewall"] == firewall
    listed = await ok(stand, "GET", "/v2/firewalls")
    assert [f["id"] for f in listed["firewalls"]] == [firewall["id"]]
    assert (await ok(stand, "GET", f"/v2/droplets/{web}/firewalls"))["meta"]["total"] == 1

    replaced = await ok(stand, "PUT", path, {"name": "renamed", "inbound_rules": [SSH_IN]})
    after = replaced["firewall"]
    assert (after["name"], after["droplet_ids"], after["tags"]) == ("renamed", [], [])
    assert (after["outbound_rules"], after["id"]) == ([], firewall["id"])
    assert (await ok(stand, "GET", f"/v2/droplets/{web}/firewalls"))["meta"]["total"] == 0

    await ok(stand, "DELETE", path, status=204)
    assert (await refused(stand, "GET", path))[0] == 404


async def test_droplets_tags_and_rules_are_added_and_removed(stand: Stand) -> None:
    [a, b] = await droplets(stand, "a-1", "b-1")
    made = await ok(stand, "POST", "/v2/firewalls", {"name": "fw", "inbound_rules": [SSH_IN]}, 202)
    path = f"/v2/firewalls/{made['firewall']['id']}"
    await ok(stand, "POST", path + "/droplets", {"droplet_ids": [a, b]}, 204)
    await ok(stand, "DELETE", path + "/droplets", {"droplet_ids": [a]}, 204)
    assert (await ok(stand, "GET", path))["firewall"]["droplet_ids"] == [b]
    assert "do not exist" in (await refused(stand, "POST", path + "/tags", {"tags": ["x"]}))[1]
    await ok(stand, "POST", "/v2/tags", {"name": "x"}, 201)
    await ok(stand, "POST", path + "/tags", {"tags": ["x"]}, 204)
    icmp = {"protocol": "icmp", "ports": "0", "sources": {"tags": ["x"]}}
    await ok(
        stand, "POST", path + "/rules", {"inbound_rules": [icmp], "outbound_rules": [ALL_OUT]}, 204
    )
    firewall = (await ok(stand, "GET", path))["firewall"]
    assert [r["protocol"] for r in firewall["inbound_rules"]] == ["tcp", "icmp"]
    await ok(stand, "DELETE", path + "/rules", {"inbound_rules": [SSH_IN]}, 204)
    firewall = (await ok(stand, "GET", path))["firewall"]
    assert (firewall["inbound_rules"], firewall["tags"]) == ([icmp], ["x"])
    assert len(firewall["outbound_rules"]) == 1

    await ok(stand, "DELETE", f"/v2/droplets/{b}", status=204)
    assert (await ok(stand, "GET", path))["firewall"]["droplet_ids"] == []


async def test_firewall_limits_and_bad_rules_are_refused(stand: Stand) -> None:
    ids = await droplets(stand, *(f"d-{n}" for n in range(10))) + await droplets(stand, "e-1")
    status, message = await refused(
        stand,
        "POST",
        "/v2/firewalls",
        {"name": "fw", "inbound_rules": [SSH_IN], "droplet_ids": ids},
    )
    assert status == 422 and "10 Droplets" in message
    made = await ok(
        stand,
        "POST",
        "/v2/firewalls",
        {"name": "fw", "inbound_rules": [SSH_IN], "droplet_ids": ids[:10]},
        202,
    )
    path = f"/v2/firewalls/{made['firewall']['id']}"
    assert (await refused(stand, "POST", path + "/droplets", {"droplet_ids": ids[10:]}))[0] == 422
    for name in "abcdef":
        await ok(stand, "POST", "/v2/tags", {"name": name}, 201)
    assert (await refused(stand, "POST", path + "/tags", {"tags": list("abcdef")}))[0] == 422
    many = {"inbound_rules": [{**SSH_IN, "ports": str(p)} for p in range(1, 51)]}
    assert "50 rules" in (await refused(stand, "POST", path + "/rules", many))[1]
    assert len((await ok(stand, "GET", path))["firewall"]["inbound_rules"]) == 1
    bad_rules = [
        {**SSH_IN, "ports": "70000"},
        {**SSH_IN, "ports": "9000-8000"},
        {**SSH_IN, "ports": ""},
        {**SSH_IN, "sources": {}},
        {**SSH_IN, "sources": {"addresses": ["not-an-address"]}},
        {**SSH_IN, "sources": {"droplet_ids": [1]}},
    ]
    for rule in bad_rules:
        body = {"name": "bad", "inbound_rules": [rule]}
        assert (await refused(stand, "POST", "/v2/firewalls", body))[0] == 422, rule
    missing = {"name": "bad", "inbound_rules": [SSH_IN], "droplet_ids": [12345]}
    assert (await refused(stand, "POST", "/v2/firewalls", missing))[0] == 422
    assert len(stand.world.firewalls) == 1


class Recording(NoMachines):
    """No machines, but the policies last handed to them are kept."""

    def __init__(self) -> None:
        super().__init__()
        self.applied: dict[int, FirewallPolicy] | None = None

    async def apply_firewalls(self, policies: dict[int, FirewallPolicy]) -> None:
        self.applied = policies


async def test_every_change_hands_the_policies_to_the_machines() -> None:
    machines = Recording()
    made, runner = await digitalocean.start_stand(machines)
    try:
        [a, b] = await droplets(made, "a-1", "b-1", tags=["web"])
        body = {"name": "fw", "inbound_rules": [SSH_IN], "tags": ["web"]}
        firewall = (await ok(made, "POST", "/v2/firewalls", body, 202))["firewall"]
        assert machines.applied is not None and set(machines.applied) == {a, b}
        untag = {"resources": [{"resource_id": str(a), "resource_type": "droplet"}]}
        await ok(made, "DELETE", "/v2/tags/web/resources", untag, 204)
        assert set(machines.applied) == {b}
        await ok(made, "DELETE", f"/v2/droplets/{b}", status=204)
        assert machines.applied == {}
        await ok(made, "DELETE", f"/v2/firewalls/{firewall['id']}", status=204)
        assert made.violations() == []
    finally:
        await runner.cleanup()


def _droplet(world: World, droplet_id: int, host: int, tags: list[str]) -> None:
    world.droplets[droplet_id] = {
        "id": droplet_id,
        "tags": tags,
        "_addresses": {"public": f"10.214.1.{host}", "private": f"10.215.1.{host}"},
    }


def test_policies_resolve_sources_by_address_droplet_and_tag_for_droplets_behind_one() -> None:
    world = World(Clock(0), NoMachines(), "t")
    _droplet(world, 1, 2, ["web"])
    _droplet(world, 2, 3, ["db"])
    _droplet(world, 3, 4, [])  # no firewall applies: no policy
    world.firewalls["f1"] = {
        "droplet_ids": [2],
        "tags": ["web"],
        "inbound_rules": [
            {"protocol": "tcp", "ports": "5432", "sources": {"tags": ["web"], "droplet_ids": [3]}},
            {"protocol": "icmp", "ports": "0", "sources": {"addresses": ["192.0.2.0/24"]}},
        ],
        "outbound_rules": [
            {"protocol": "udp", "ports": "0", "destinations": {"load_balancer_uids": ["lb"]}},
        ],
    }
    world.firewalls["f2"] = {
        "droplet_ids": [],
        "tags": ["db"],
        "inbound_rules": [{"protocol": "tcp", "ports": "22", "sources": {"droplet_ids": [9]}}],
        "outbound_rules": [],
    }
    found = policies(world)
    assert set(found) == {1, 2}
    web_rules = (
        FirewallRule("tcp", "5432", ("10.214.1.4", "10.215.1.4", "10.214.1.2", "10.215.1.2")),
        FirewallRule("icmp", "", ("192.0.2.0/24",)),
    )
    out = (FirewallRule("udp", "all", ()),)
    assert found[1] == FirewallPolicy(inbound=web_rules, outbound=out)
    assert found[2] == FirewallPolicy(
        inbound=(*web_rules, FirewallRule("tcp", "22", ())), outbound=out
    )


# Volumes ----------------------------------------------------------------------------------


async def volume(stand: Stand, name: str = "data", size: int = 10, **extra: Any) -> str:
    body = {"name": name, "region": "nyc3", "size_gigabytes": size, **extra}
    made = await ok(stand, "POST", "/v2/volumes", body, 201)
    return str(made["volume"]["id"])


async def act(stand: Stand, volume_id: str, body: dict[str, Any]) -> dict[str, Any]:
    answer = await ok(stand, "POST", f"/v2/volumes/{volume_id}/actions", body, 202)
    action: dict[str, Any] = answer["action"]
    return action


async def test_a_volume_attaches_detaches_and_reattaches_on_the_clock(stand: Stand) -> None:
    [a, b] = await droplets(stand, "a-1", "b-1")
    vid = await volume(stand, filesystem_type="ext4", tags=["data"])
    path = f"/v2/volumes/{vid}"
    action = await act(stand, vid, {"type": "attach", "droplet_id": a, "region": "nyc3"})
    assert (action["type"], action["status"], action["resource_id"]) == (
        "attach_volume",
        "in-progress",
        None,
    )
    status, message = await refused(
        stand, "POST", path + "/actions", {"type": "attach", "droplet_id": b}
    )
    assert (status, message) == (422, "Volume already has a pending event.")
    assert await refused(stand, "DELETE", path) == (422, "Volume already has a pending event.")
    assert (await ok(stand, "GET", path))["volume"]["droplet_ids"] == []
    await stand.advance(stand.world.delays.volume)
    done = await ok(stand, "GET", f"{path}/actions/{action['id']}")
    assert done["action"]["status"] == "completed"
    assert (await ok(stand, "GET", path))["volume"]["droplet_ids"] == [a]
    assert (await ok(stand, "GET", f"/v2/droplets/{a}"))["droplet"]["volume_ids"] == [vid]

    status, message = await refused(
        stand, "POST", path + "/actions", {"type": "attach", "droplet_id": b}
    )
    assert status == 422 and "another Droplet" in message
    assert (await refused(stand, "DELETE", path))[0] == 409
    detach_b = {"type": "detach", "droplet_id": b}
    assert (await refused(stand, "POST", path + "/actions", detach_b))[0] == 404

    await ok(
        stand,
        "POST",
        "/v2/volumes/actions",
        {"type": "detach", "volume_name": "data", "droplet_id": a, "region": "nyc3"},
        202,
    )
    await stand.advance(stand.world.delays.volume)
    assert (await ok(stand, "GET", path))["volume"]["droplet_ids"] == []
    assert (await ok(stand, "GET", f"/v2/droplets/{a}"))["droplet"]["volume_ids"] == []
    await act(stand, vid, {"type": "attach", "droplet_id": b})
    await stand.advance(stand.world.delays.volume)
    assert (await ok(stand, "GET", path))["volume"]["droplet_ids"] == [b]
    listed = await ok(stand, "GET", path + "/actions")
    kinds = [x["type"] for x in listed["actions"]]
    assert kinds == ["attach_volume", "detach_volume", "attach_volume"]

    await ok(stand, "DELETE", f"/v2/droplets/{b}", status=204)
    assert (await ok(stand, "GET", path))["volume"]["droplet_ids"] == []
    await ok(stand, "DELETE", path, status=204)
    assert (await refused(stand, "GET", path))[0] == 404


async def test_a_droplet_takes_fifteen_volumes_counting_attaches_under_way(stand: Stand) -> None:
    [a] = await droplets(stand, "web-1")
    made = [await volume(stand, name=f"data-{n}") for n in range(16)]
    for vid in made[:15]:  # all started before any finishes
        await act(stand, vid, {"type": "attach", "droplet_id": a})
    status, message = await refused(
        stand, "POST", f"/v2/volumes/{made[15]}/actions", {"type": "attach", "droplet_id": a}
    )
    assert (status, message) == (422, "A Droplet can have at most 15 volumes attached.")
    await stand.advance(stand.world.delays.volume)
    droplet = await ok(stand, "GET", f"/v2/droplets/{a}")
    assert len(droplet["droplet"]["volume_ids"]) == 15
    assert (
        await refused(
            stand, "POST", f"/v2/volumes/{made[15]}/actions", {"type": "attach", "droplet_id": a}
        )
    )[0] == 422


async def test_volume_refusals_resize_grows_only_and_delete_by_name(stand: Stand) -> None:
    [far] = await droplets(stand, "far-1", region="fra1")
    vid = await volume(stand, size=10)
    body = {"name": "data", "region": "nyc3", "size_gigabytes": 5}
    assert (await refused(stand, "POST", "/v2/volumes", body))[0] == 409
    await volume(stand, size=5, region="sfo3")  # the same name in another region
    assert (await refused(stand, "POST", "/v2/volumes", {**body, "name": "Bad_Name"}))[0] == 422
    assert (await refused(stand, "POST", "/v2/volumes", {**body, "region": "ams1"}))[0] == 422
    status, message = await refused(
        stand, "POST", f"/v2/volumes/{vid}/actions", {"type": "attach", "droplet_id": far}
    )
    assert status == 422 and "same region" in message
    for size in (10, 5):
        shrink = {"type": "resize", "size_gigabytes": size}
        assert (await refused(stand, "POST", f"/v2/volumes/{vid}/actions", shrink))[0] == 422
    await act(stand, vid, {"type": "resize", "size_gigabytes": 20, "region": "nyc3"})
    await stand.advance(stand.world.delays.volume)
    assert (await ok(stand, "GET", f"/v2/volumes/{vid}"))["volume"]["size_gigabytes"] == 20
    listed = await ok(stand, "GET", "/v2/volumes?name=data&region=nyc3")
    assert [v["id"] for v in listed["volumes"]] == [vid]
    assert (await ok(stand, "GET", "/v2/volumes?name=data"))["meta"]["total"] == 2
    await ok(stand, "DELETE", "/v2/volumes?name=data&region=nyc3", status=204)
    assert (await ok(stand, "GET", "/v2/volumes"))["meta"]["total"] == 1
    assert (await refused(stand, "DELETE", "/v2/volumes?name=data&region=nyc3"))[0] == 404


async def test_volume_snapshots_are_taken_listed_and_deleted(stand: Stand) -> None:
    vid = await volume(stand, size=8)
    made = await ok(stand, "POST", f"/v2/volumes/{vid}/snapshots", {"name": "snap-1"}, 201)
    snapshot = made["snapshot"]
    assert (snapshot["resource_type"], snapshot["resource_id"]) == ("volume", vid)
    assert snapshot["min_disk_size"] == 8
    listed = await ok(stand, "GET", f"/v2/volumes/{vid}/snapshots")
    assert [s["id"] for s in listed["snapshots"]] == [snapshot["id"]]
    path = f"/v2/volumes/snapshots/{snapshot['id']}"
    assert (await ok(stand, "GET", path))["snapshot"] == snapshot
    small = {"name": "copy", "region": "nyc3", "size_gigabytes": 4, "snapshot_id": snapshot["id"]}
    assert (await refused(stand, "POST", "/v2/volumes", small))[0] == 422
    await ok(stand, "POST", "/v2/volumes", {**small, "size_gigabytes": 8}, 201)
    await ok(stand, "DELETE", path, status=204)
    assert (await refused(stand, "GET", path))[0] == 404


# Images and snapshots ---------------------------------------------------------------------


async def snapshot_of(stand: Stand, droplet_id: int, name: str) -> int:
    path = f"/v2/droplets/{droplet_id}/actions"
    await ok(stand, "POST", path, {"type": "snapshot", "name": name}, 201)
    await stand.advance(600)
    return int(
        (await ok(stand, "GET", f"/v2/droplets/{droplet_id}"))["droplet"]["snapshot_ids"][-1]
    )


async def test_images_list_distributions_and_snapshots_with_pages_and_filters(
    stand: Stand,
) -> None:
    [web] = await droplets(stand, "web-1")
    image_id = await snapshot_of(stand, web, "web-snap")
    everything = await ok(stand, "GET", "/v2/images")
    assert everything["meta"]["total"] == 4
    first = await ok(stand, "GET", "/v2/images?per_page=1")
    assert len(first["images"]) == 1 and "next" in first["links"]["pages"]
    assert first["meta"]["total"] == 4
    last = await ok(stand, "GET", "/v2/images?per_page=1&page=4")
    assert last["images"][0]["id"] == image_id and "next" not in last["links"]["pages"]
    private = await ok(stand, "GET", "/v2/images?private=true")
    assert [(i["id"], i["type"]) for i in private["images"]] == [(image_id, "snapshot")]
    distributions = await ok(stand, "GET", "/v2/images?type=distribution")
    assert {i["type"] for i in distributions["images"]} == {"base"}
    assert (await ok(stand, "GET", "/v2/images?type=application"))["images"] == []
    by_slug = await ok(stand, "GET", "/v2/images/debian-12-x64")
    assert by_slug["image"]["slug"] == "debian-12-x64"
    assert (await ok(stand, "GET", f"/v2/images/{image_id}"))["image"]["name"] == "web-snap"
    renamed = await ok(stand, "PUT", f"/v2/images/{image_id}", {"name": "renamed"})
    assert renamed["image"]["name"] == "renamed"
    distribution_id = by_slug["image"]["id"]
    assert (await refused(stand, "DELETE", f"/v2/images/{distribution_id}"))[0] == 403
    custom = {"name": "x", "url": "http://example.com/x.img", "region": "nyc3"}
    assert (await refused(stand, "POST", "/v2/images", custom))[0] == 422

    transfer = await ok(
        stand, "POST", f"/v2/images/{image_id}/actions", {"type": "transfer", "region": "fra1"}, 201
    )
    action_path = f"/v2/images/{image_id}/actions/{transfer['action']['id']}"
    assert (await ok(stand, "GET", action_path))["action"]["status"] == "in-progress"
    await stand.advance(600)
    assert (await ok(stand, "GET", action_path))["action"]["status"] == "completed"
    assert (await ok(stand, "GET", f"/v2/images/{image_id}/actions"))["meta"]["total"] == 1
    regions = (await ok(stand, "GET", f"/v2/images/{image_id}"))["image"]["regions"]
    assert regions == ["nyc3", "fra1"]

    await ok(stand, "DELETE", f"/v2/images/{image_id}", status=204)
    assert (await refused(stand, "GET", f"/v2/images/{image_id}"))[0] == 404
    assert (await ok(stand, "GET", f"/v2/droplets/{web}"))["droplet"]["snapshot_ids"] == []


async def test_snapshots_of_droplets_and_volumes_are_listed_by_type_and_deleted(
    stand: Stand,
) -> None:
    [web] = await droplets(stand, "web-1")
    image_id = await snapshot_of(stand, web, "web-snap")
    vid = await volume(stand)
    await ok(stand, "POST", f"/v2/volumes/{vid}/snapshots", {"name": "vol-snap"}, 201)
    assert (await ok(stand, "GET", "/v2/snapshots"))["meta"]["total"] == 2
    mine = await ok(stand, "GET", "/v2/snapshots?resource_type=droplet")
    assert [s["id"] for s in mine["snapshots"]] == [str(image_id)]
    volume_snaps = await ok(stand, "GET", "/v2/snapshots?resource_type=volume&per_page=1")
    assert [s["name"] for s in volume_snaps["snapshots"]] == ["vol-snap"]
    got = await ok(stand, "GET", f"/v2/snapshots/{image_id}")
    assert got["snapshot"]["resource_id"] == str(web)
    await ok(stand, "DELETE", f"/v2/snapshots/{image_id}", status=204)
    await ok(stand, "DELETE", f"/v2/snapshots/{volume_snaps['snapshots'][0]['id']}", status=204)
    assert (await ok(stand, "GET", "/v2/snapshots"))["meta"]["total"] == 0
    assert (await ok(stand, "GET", f"/v2/droplets/{web}"))["droplet"]["snapshot_ids"] == []
    assert (await refused(stand, "DELETE", f"/v2/snapshots/{image_id}"))[0] == 404
