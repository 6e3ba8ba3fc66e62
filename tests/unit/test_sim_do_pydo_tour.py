"""A tour of the DigitalOcean stand-in with pydo, as a provider drives it: every one of the 76
operations of the API description is performed once at least (keys, droplets and their
actions, snapshots, images, firewalls, reserved IPs, volumes, VPCs, tags, then deletes), each
answer is checked for what it should show, and the request log proves the coverage: every
operationId of the description was answered, all with a 2xx but the refusals listed here."""

from __future__ import annotations

import json
from typing import Any

import asyncssh
import pytest
from azure.core.exceptions import HttpResponseError

from sim.digitalocean.server import GATE
from sim.digitalocean.spec import SPEC_FILE
from tests.support.digitalocean import Stand

DROPLET = {"region": "nyc3", "size": "s-1vcpu-1gb", "image": "debian-12-x64"}
SSH_IN = {"protocol": "tcp", "ports": "22", "sources": {"addresses": ["0.0.0.0/0"]}}
ALL_OUT = {"protocol": "tcp", "ports": "all", "destinations": {"addresses": ["0.0.0.0/0"]}}
ICMP_IN = {"protocol": "icmp", "ports": "0", "sources": {"tags": ["tour"]}}

# Operations the stand-in refuses by design: pydo sends them and gets the documented refusal
# (the description's `default` error answer); they count as performed.
REFUSED_BY_DESIGN = {
    "images_create_custom": 422,  # no custom image uploads: "not supported by the stand-in"
}


def _operations() -> dict[tuple[str, tuple[str, ...]], str]:
    document = json.loads(SPEC_FILE.read_text())
    return {
        (method.upper(), tuple(path.strip("/").split("/"))): operation["operationId"]
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        if isinstance(operation, dict) and "operationId" in operation
    }


OPERATIONS = _operations()


def operation_of(method: str, path: str) -> str:
    """The description's operation for a request: its path matched against the templates
    (`{param}` = one segment), the most literal match winning (`/v2/volumes/actions` over
    `/v2/volumes/{volume_id}`)."""
    segments = path.strip("/").split("/")
    found = sorted(
        (sum(not t.startswith("{") for t in template), operation_id)
        for (verb, template), operation_id in OPERATIONS.items()
        if verb == method
        and len(template) == len(segments)
        and all(t.startswith("{") or t == s for t, s in zip(template, segments, strict=True))
    )
    assert found, f"no operation of the description for {method} {path}"
    assert len(found) == 1 or found[-1][0] > found[-2][0], f"ambiguous: {method} {path}"
    return found[-1][1]


def test_the_request_log_maps_to_operations_by_method_and_most_literal_path() -> None:
    assert len(OPERATIONS) == 76 and len(set(OPERATIONS.values())) == 76
    assert operation_of("DELETE", "/v2/droplets") == "droplets_destroy_byTag"
    assert operation_of("POST", "/v2/droplets/actions") == "dropletActions_post_byTag"
    assert operation_of("POST", "/v2/volumes/actions") == "volumeActions_post"
    assert operation_of("POST", "/v2/volumes/abc/actions") == "volumeActions_post_byId"
    assert operation_of("GET", "/v2/volumes/snapshots/abc") == "volumeSnapshots_get_byId"
    assert operation_of("GET", "/v2/volumes/abc/snapshots") == "volumeSnapshots_list"
    assert operation_of("PATCH", "/v2/vpcs/abc") == "vpcs_patch"


class Tour:
    """The stand and the refusals (method, path, status) the tour means to get."""

    def __init__(self, stand: Stand, do: Any) -> None:
        self.stand = stand
        self.do = do
        self.expected: set[tuple[str, str, int]] = set()

    async def advance(self, seconds: float) -> None:
        await self.stand.advance(seconds)

    def expect(self, method: str, path: str, status: int) -> None:
        self.expected.add((method, path, status))

    async def gone(self, call: Any, method: str, path: str) -> None:
        """`call` is a GET pydo answers with the 404 document: the thing is gone."""
        self.expect(method, path, 404)
        answer = await call
        assert answer["id"] == "not_found", answer

    async def refused(self, call: Any, method: str, path: str, status: int) -> dict[str, Any]:
        self.expect(method, path, status)
        with pytest.raises(HttpResponseError) as caught:
            await call
        response = caught.value.response
        assert response is not None and caught.value.status_code == status
        body: dict[str, Any] = json.loads(response.text())
        return body


async def tour_account_and_keys(t: Tour) -> dict[str, Any]:
    do = t.do
    assert (await do.account.get())["account"]["status"] == "active"
    assert "nyc3" in {r["slug"] for r in (await do.regions.list(per_page=200))["regions"]}
    assert "s-2vcpu-4gb" in {s["slug"] for s in (await do.sizes.list(per_page=200))["sizes"]}
    public = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    key = (await do.ssh_keys.create({"name": "tour", "public_key": public}))["ssh_key"]
    assert key["public_key"] == public
    assert [k["id"] for k in (await do.ssh_keys.list())["ssh_keys"]] == [key["id"]]
    assert (await do.ssh_keys.get(key["fingerprint"]))["ssh_key"]["id"] == key["id"]
    renamed = (await do.ssh_keys.update(key["id"], {"name": "tour-2"}))["ssh_key"]
    assert renamed["name"] == "tour-2"
    assert (await do.ssh_keys.get(key["id"]))["ssh_key"]["name"] == "tour-2"
    return dict(key)


async def tour_droplets(t: Tour, key: dict[str, Any]) -> tuple[int, int]:
    do, world = t.do, t.stand.world
    made = await do.droplets.create(
        {"names": ["tour-1", "tour-2"], **DROPLET, "ssh_keys": [key["id"]], "tags": ["tour"]}
    )
    one, two = (d["id"] for d in made["droplets"])
    assert {d["status"] for d in made["droplets"]} == {"new"}
    create_id = made["links"]["actions"][0]["id"]
    assert (await do.actions.get(create_id))["action"]["status"] == "in-progress"
    await t.advance(world.delays.create)
    assert (await do.actions.get(create_id))["action"]["status"] == "completed"
    listed = (await do.actions.list(per_page=200))["actions"]
    assert {a["resource_id"] for a in listed if a["type"] == "create"} == {one, two}
    tagged = (await do.droplets.list(tag_name="tour"))["droplets"]
    assert sorted(d["id"] for d in tagged) == [one, two]
    droplet = (await do.droplets.get(one))["droplet"]
    assert (droplet["name"], droplet["status"], droplet["locked"]) == ("tour-1", "active", False)
    return one, two


async def tour_droplet_actions(t: Tour, one: int) -> int:
    """Snapshot, rebuild from it, power off, resize, power on, power cycle by tag; the
    snapshot's image id."""
    do, world = t.do, t.stand.world
    snap = (await do.droplet_actions.post(one, {"type": "snapshot", "name": "tour-gold"}))["action"]
    got = (await do.droplet_actions.get(one, snap["id"]))["action"]
    assert (got["type"], got["status"]) == ("snapshot", "in-progress")
    await t.advance(600)
    assert (await do.droplet_actions.get(one, snap["id"]))["action"]["status"] == "completed"
    [snapshot] = (await do.droplets.list_snapshots(one))["snapshots"]
    assert snapshot["name"] == "tour-gold"
    image_id: int = snapshot["id"]
    assert (await do.droplets.get(one))["droplet"]["snapshot_ids"] == [image_id]

    await do.droplet_actions.post(one, {"type": "rebuild", "image": image_id})
    await t.advance(world.delays.rebuild + 100 * world.delays.rebuild_per_gb)
    rebuilt = (await do.droplets.get(one))["droplet"]
    assert (rebuilt["image"]["id"], rebuilt["status"]) == (image_id, "active")

    await do.droplet_actions.post(one, {"type": "power_off"})
    await t.advance(world.delays.power_off)
    await t.advance(world.knobs.active_after_off)  # counted from when the action completed
    assert (await do.droplets.get(one))["droplet"]["status"] == "off"
    await do.droplet_actions.post(one, {"type": "resize", "size": "s-2vcpu-4gb", "disk": True})
    await t.advance(1000)
    resized = (await do.droplets.get(one))["droplet"]
    assert (resized["size_slug"], resized["memory"], resized["disk"]) == ("s-2vcpu-4gb", 4096, 80)
    await do.droplet_actions.post(one, {"type": "power_on"})
    await t.advance(world.delays.power_on)
    assert (await do.droplets.get(one))["droplet"]["status"] == "active"

    cycled = await do.droplet_actions.post_by_tag({"type": "power_cycle"}, tag_name="tour")
    assert {a["type"] for a in cycled["actions"]} == {"power_cycle"}
    assert len(cycled["actions"]) == 2
    await t.advance(world.delays.reboot)
    kinds = [a["type"] for a in (await do.droplet_actions.list(one, per_page=50))["actions"]]
    assert kinds == ["create", "snapshot", "rebuild", "power_off", "resize", "power_on",
                     "power_cycle"]  # fmt: skip
    assert {d["status"] for d in (await do.droplets.list(tag_name="tour"))["droplets"]} == {
        "active"
    }
    return image_id


async def tour_snapshots_and_images(t: Tour, one: int, image_id: int) -> None:
    do = t.do
    mine = (await do.snapshots.list(resource_type="droplet"))["snapshots"]
    assert [s["id"] for s in mine] == [str(image_id)]
    assert (await do.snapshots.get(str(image_id)))["snapshot"]["resource_id"] == str(one)
    private = (await do.images.list(private=True))["images"]
    assert [(i["id"], i["type"]) for i in private] == [(image_id, "snapshot")]
    assert (await do.images.get(image_id))["image"]["name"] == "tour-gold"
    assert (await do.images.update(image_id, {"name": "tour-silver"}))["image"][
        "name"
    ] == "tour-silver"
    assert (await do.images.get(image_id))["image"]["name"] == "tour-silver"
    transfer = await do.image_actions.post(image_id, {"type": "transfer", "region": "fra1"})
    action_id = transfer["action"]["id"]
    assert (await do.image_actions.get(image_id, action_id))["action"]["status"] == "in-progress"
    await t.advance(600)
    assert (await do.image_actions.get(image_id, action_id))["action"]["status"] == "completed"
    assert [a["id"] for a in (await do.image_actions.list(image_id))["actions"]] == [action_id]
    assert (await do.images.get(image_id))["image"]["regions"] == ["nyc3", "fra1"]
    custom = {"name": "custom", "url": "http://example.com/x.img", "region": "nyc3"}
    body = await t.refused(do.images.create_custom(custom), "POST", "/v2/images", 422)
    assert "not supported" in body["message"]


async def tour_firewalls(t: Tour, one: int, two: int) -> str:
    do = t.do
    made = await do.firewalls.create(
        {"name": "tour-fw", "inbound_rules": [SSH_IN], "outbound_rules": [ALL_OUT],
         "droplet_ids": [one]}
    )  # fmt: skip
    firewall = made["firewall"]
    fw = firewall["id"]
    assert (firewall["status"], firewall["droplet_ids"]) == ("succeeded", [one])
    assert (await do.firewalls.get(fw))["firewall"] == firewall
    assert [f["id"] for f in (await do.firewalls.list())["firewalls"]] == [fw]
    assert [f["id"] for f in (await do.droplets.list_firewalls(one))["firewalls"]] == [fw]
    replaced = await do.firewalls.update(
        fw, {"name": "tour-fw-2", "inbound_rules": [SSH_IN], "droplet_ids": [one]}
    )
    assert (replaced["firewall"]["name"], replaced["firewall"]["outbound_rules"]) == (
        "tour-fw-2",
        [],
    )

    assert await do.firewalls.assign_droplets(fw, {"droplet_ids": [two]}) is None
    assert (await do.firewalls.get(fw))["firewall"]["droplet_ids"] == [one, two]
    assert await do.firewalls.delete_droplets(fw, {"droplet_ids": [one]}) is None
    assert (await do.firewalls.get(fw))["firewall"]["droplet_ids"] == [two]
    assert (await do.droplets.list_firewalls(one))["firewalls"] == []

    assert await do.firewalls.add_tags(fw, {"tags": ["tour"]}) is None
    assert (await do.firewalls.get(fw))["firewall"]["tags"] == ["tour"]
    assert await do.firewalls.delete_tags(fw, {"tags": ["tour"]}) is None
    assert (await do.firewalls.get(fw))["firewall"]["tags"] == []

    rules = {"inbound_rules": [ICMP_IN], "outbound_rules": [ALL_OUT]}
    assert await do.firewalls.add_rules(fw, rules) is None
    after = (await do.firewalls.get(fw))["firewall"]
    assert [r["protocol"] for r in after["inbound_rules"]] == ["tcp", "icmp"]
    assert len(after["outbound_rules"]) == 1
    assert await do.firewalls.delete_rules(fw, {"inbound_rules": [SSH_IN]}) is None
    assert (await do.firewalls.get(fw))["firewall"]["inbound_rules"] == [ICMP_IN]
    return str(fw)


async def tour_reserved_ips(t: Tour, one: int, two: int) -> str:
    do, delay = t.do, t.stand.world.delays.reserved_ip
    made = await do.reserved_ips.create({"droplet_id": one})
    ip = made["reserved_ip"]["ip"]
    await t.advance(delay)
    assert (await do.reserved_ips.get(ip))["reserved_ip"]["droplet"]["id"] == one
    assert [r["ip"] for r in (await do.reserved_ips.list())["reserved_ips"]] == [ip]
    move = (await do.reserved_ips_actions.post(ip, {"type": "assign", "droplet_id": two}))["action"]
    assert (await do.reserved_ips_actions.get(ip, move["id"]))["action"]["status"] == "in-progress"
    await t.advance(delay)
    assert (await do.reserved_ips_actions.get(ip, move["id"]))["action"]["status"] == "completed"
    assert (await do.reserved_ips.get(ip))["reserved_ip"]["droplet"]["id"] == two
    await do.reserved_ips_actions.post(ip, {"type": "unassign"})
    await t.advance(delay)
    assert (await do.reserved_ips.get(ip))["reserved_ip"]["droplet"] is None
    kinds = [a["type"] for a in (await do.reserved_ips_actions.list(ip))["actions"]]
    assert kinds == ["assign_ip", "assign_ip", "unassign_ip"]
    return str(ip)


async def tour_volumes(t: Tour, one: int) -> tuple[str, str, str]:
    """Attach, detach by name, resize, two snapshots and a volume made of one (deleted by
    name); the volume's id and its snapshots' ids."""
    do, delay = t.do, t.stand.world.delays.volume
    body = {"name": "tour-data", "region": "nyc3", "size_gigabytes": 10, "tags": ["tour"]}
    volume = (await do.volumes.create(body))["volume"]
    vid = volume["id"]
    assert (await do.volumes.get(vid))["volume"] == volume
    assert [v["id"] for v in (await do.volumes.list(name="tour-data"))["volumes"]] == [vid]

    attach = await do.volume_actions.post_by_id(vid, {"type": "attach", "droplet_id": one})
    action_id = attach["action"]["id"]
    assert (await do.volume_actions.get(vid, action_id))["action"]["status"] == "in-progress"
    await t.advance(delay)
    assert (await do.volume_actions.get(vid, action_id))["action"]["status"] == "completed"
    assert (await do.volumes.get(vid))["volume"]["droplet_ids"] == [one]
    assert (await do.droplets.get(one))["droplet"]["volume_ids"] == [vid]
    detach = {"type": "detach", "volume_name": "tour-data", "droplet_id": one, "region": "nyc3"}
    assert (await do.volume_actions.post(detach))["action"]["type"] == "detach_volume"
    await t.advance(delay)
    assert (await do.volumes.get(vid))["volume"]["droplet_ids"] == []
    await do.volume_actions.post_by_id(vid, {"type": "resize", "size_gigabytes": 20})
    await t.advance(delay)
    assert (await do.volumes.get(vid))["volume"]["size_gigabytes"] == 20
    kinds = [a["type"] for a in (await do.volume_actions.list(vid))["actions"]]
    assert kinds == ["attach_volume", "detach_volume", "resize_volume"]

    first = (await do.volume_snapshots.create(vid, {"name": "tour-vsnap-1"}))["snapshot"]
    second = (await do.volume_snapshots.create(vid, {"name": "tour-vsnap-2"}))["snapshot"]
    assert (first["resource_id"], first["min_disk_size"]) == (vid, 20)
    listed = (await do.volume_snapshots.list(vid))["snapshots"]
    assert [s["id"] for s in listed] == [first["id"], second["id"]]
    assert (await do.volume_snapshots.get_by_id(first["id"]))["snapshot"] == first

    copy = {"name": "tour-copy", "region": "nyc3", "size_gigabytes": 20,
            "snapshot_id": first["id"]}  # fmt: skip
    assert (await do.volumes.create(copy))["volume"]["name"] == "tour-copy"
    assert await do.volumes.delete_by_name(name="tour-copy", region="nyc3") is None
    assert (await do.volumes.list(name="tour-copy"))["volumes"] == []
    return str(vid), str(first["id"]), str(second["id"])


async def tour_vpcs(t: Tour, one: int, two: int) -> None:
    do = t.do
    vpc = (await do.vpcs.create({"name": "tour-net", "region": "nyc3"}))["vpc"]
    assert (await do.vpcs.get(vpc["id"]))["vpc"] == vpc
    assert vpc["id"] in {v["id"] for v in (await do.vpcs.list())["vpcs"]}
    assert (await do.vpcs.update(vpc["id"], {"name": "tour-net-2"}))["vpc"]["name"] == "tour-net-2"
    patched = (await do.vpcs.patch(vpc["id"], {"description": "the tour's"}))["vpc"]
    assert (patched["name"], patched["description"]) == ("tour-net-2", "the tour's")
    assert (await do.vpcs.get(vpc["id"]))["vpc"]["description"] == "the tour's"
    default = (await do.droplets.get(one))["droplet"]["vpc_uuid"]
    members = (await do.vpcs.list_members(default))["members"]
    assert {m["urn"] for m in members} == {f"do:droplet:{one}", f"do:droplet:{two}"}
    assert (await do.vpcs.list_members(vpc["id"]))["members"] == []
    assert await do.vpcs.delete(vpc["id"]) is None
    path = f"/v2/vpcs/{vpc['id']}"
    await t.gone(do.vpcs.get(vpc["id"]), "GET", path)


async def tour_tags(t: Tour, one: int, vid: str) -> None:
    do = t.do
    tour = (await do.tags.get("tour"))["tag"]["resources"]
    assert (tour["droplets"]["count"], tour["volumes"]["count"]) == (2, 1)
    assert (await do.tags.create({"name": "tour:extra"}))["tag"]["resources"]["count"] == 0
    assert {"tour", "tour:extra"} <= {g["name"] for g in (await do.tags.list())["tags"]}
    resources = [
        {"resource_id": str(one), "resource_type": "droplet"},
        {"resource_id": vid, "resource_type": "volume"},
    ]
    assert await do.tags.assign_resources("tour:extra", {"resources": resources}) is None
    assert (await do.tags.get("tour:extra"))["tag"]["resources"]["count"] == 2
    assert "tour:extra" in (await do.droplets.get(one))["droplet"]["tags"]
    assert await do.tags.unassign_resources("tour:extra", {"resources": resources[:1]}) is None
    extra = (await do.tags.get("tour:extra"))["tag"]["resources"]
    assert (extra["droplets"]["count"], extra["volumes"]["count"]) == (0, 1)
    assert await do.tags.delete("tour:extra") is None
    await t.gone(do.tags.get("tour:extra"), "GET", "/v2/tags/tour:extra")
    assert (await do.volumes.get(vid))["volume"]["tags"] == ["tour"]


async def test_pydo_performs_every_operation_of_the_description(stand: Stand) -> None:
    async with stand.client() as do:
        t = Tour(stand, do)
        key = await tour_account_and_keys(t)
        one, two = await tour_droplets(t, key)
        image_id = await tour_droplet_actions(t, one)
        await tour_snapshots_and_images(t, one, image_id)
        fw = await tour_firewalls(t, one, two)
        ip = await tour_reserved_ips(t, one, two)
        vid, first, second = await tour_volumes(t, one)
        await tour_vpcs(t, one, two)
        await tour_tags(t, one, vid)

        # Deletes: each makes its thing answer 404.
        assert await do.firewalls.delete(fw) is None
        await t.gone(do.firewalls.get(fw), "GET", f"/v2/firewalls/{fw}")
        assert await do.reserved_ips.delete(ip) is None
        await t.gone(do.reserved_ips.get(ip), "GET", f"/v2/reserved_ips/{ip}")
        assert await do.volume_snapshots.delete_by_id(first) is None
        path = f"/v2/volumes/snapshots/{first}"
        await t.gone(do.volume_snapshots.get_by_id(first), "GET", path)
        assert await do.snapshots.delete(second) is None
        await t.gone(do.snapshots.get(second), "GET", f"/v2/snapshots/{second}")
        assert await do.images.delete(image_id) is None
        await t.gone(do.images.get(image_id), "GET", f"/v2/images/{image_id}")
        assert (await do.snapshots.list())["snapshots"] == []
        assert await do.volumes.delete(vid) is None
        await t.gone(do.volumes.get(vid), "GET", f"/v2/volumes/{vid}")
        assert await do.droplets.destroy(one) is None
        await t.gone(do.droplets.get(one), "GET", f"/v2/droplets/{one}")
        assert await do.droplets.destroy_by_tag(tag_name="tour") is None
        await t.gone(do.droplets.get(two), "GET", f"/v2/droplets/{two}")
        assert (await do.droplets.list())["droplets"] == []
        assert await do.ssh_keys.delete(key["id"]) is None
        path = f"/v2/account/keys/{key['id']}"
        await t.gone(do.ssh_keys.get(key["id"]), "GET", path)

    # Coverage: every request pydo sent, as (method, path, status) and as its operation.
    log = [(r["method"], r["path"], r["status"]) for r in stand.app[GATE].ledger.requests]
    assert stand.invalid() == [], "pydo sent requests the description refuses"
    assert [seen for seen in log if not 200 <= seen[2] < 300 and seen not in t.expected] == []
    assert t.expected <= set(log)
    performed = {operation_of(method, path) for method, path, _ in log}
    assert performed == set(OPERATIONS.values())
    answered = {operation_of(method, path) for method, path, status in log if status < 300}
    refused = {
        operation_of(method, path): status
        for method, path, status in log
        if operation_of(method, path) not in answered
    }
    assert refused == REFUSED_BY_DESIGN
