"""The DigitalOcean stand-in's API, driven by pydo as the provider will drive it: every
operation on droplets, their actions, keys, reserved IPs, VPCs and tags answers in the shapes
the API description allows (the `stand` fixture fails a test whose answers it refuses), and
time, limits, pending events and faults behave as DigitalOcean documents them."""

from __future__ import annotations

from typing import Any

import aiohttp
import asyncssh
import pytest
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

from tests.support.digitalocean import Stand

DROPLET = {"region": "nyc3", "size": "s-1vcpu-1gb", "image": "debian-12-x64"}


def public_key() -> str:
    return asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()


async def make_droplet(stand: Stand, do: Any, name: str = "web-1", **extra: Any) -> dict[str, Any]:
    answer = await do.droplets.create({"name": name, **DROPLET, **extra})
    await stand.advance(stand.world.delays.create)
    droplet: dict[str, Any] = (await do.droplets.get(answer["droplet"]["id"]))["droplet"]
    return droplet


async def refused(call: Any) -> tuple[int, dict[str, Any]]:
    with pytest.raises(HttpResponseError) as caught:
        await call
    return caught.value.status_code, caught.value.response.json()


async def test_a_droplet_is_new_then_active_after_its_boot_delay_with_addresses(
    stand: Stand,
) -> None:
    async with stand.client() as do:
        key = (await do.ssh_keys.create({"name": "ops", "public_key": public_key()}))["ssh_key"]
        answer = await do.droplets.create(
            {"name": "web-1", **DROPLET, "ssh_keys": [key["fingerprint"]], "tags": ["mesh"]}
        )
        droplet = answer["droplet"]
        assert (droplet["status"], droplet["networks"]["v4"]) == ("new", [])
        action_id = answer["links"]["actions"][0]["id"]
        await stand.advance(stand.world.delays.create - 1)
        assert (await do.actions.get(action_id))["action"]["status"] == "in-progress"
        await stand.advance(2)
        action = (await do.actions.get(action_id))["action"]
        assert (action["status"], action["type"], action["resource_id"]) == (
            "completed",
            "create",
            droplet["id"],
        )
        active = (await do.droplets.get(droplet["id"]))["droplet"]
        assert active["status"] == "active" and not active["locked"]
        kinds = {n["type"]: n["ip_address"] for n in active["networks"]["v4"]}
        nets = stand.world.machines.networks
        assert kinds["public"].startswith(nets.public + ".")
        assert kinds["private"].startswith(nets.private + ".")
        assert stand.world.facts[droplet["id"]].public_keys == (key["public_key"],)
        assert active["vpc_uuid"] in {v["id"] for v in (await do.vpcs.list())["vpcs"]}


async def test_many_names_make_many_droplets_and_lists_page_and_filter(stand: Stand) -> None:
    async with stand.client() as do:
        answer = await do.droplets.create(
            {"names": ["a-1", "a-2", "a-3"], **DROPLET, "tags": ["group-a"]}
        )
        assert [d["name"] for d in answer["droplets"]] == ["a-1", "a-2", "a-3"]
        assert len(answer["links"]["actions"]) == 3
        await do.droplets.create({"name": "b-1", **DROPLET})
        first = await do.droplets.list(per_page=2)
        assert first["meta"]["total"] == 4 and len(first["droplets"]) == 2
        assert "page=2" in first["links"]["pages"]["next"]
        second = await do.droplets.list(per_page=2, page=2)
        assert "next" not in second["links"]["pages"] and "prev" in second["links"]["pages"]
        assert {d["name"] for d in (await do.droplets.list(tag_name="group-a"))["droplets"]} == {
            "a-1",
            "a-2",
            "a-3",
        }
        assert [d["name"] for d in (await do.droplets.list(name="b-1"))["droplets"]] == ["b-1"]
        await stand.advance(stand.world.delays.create)
        assert await do.droplets.destroy_by_tag(tag_name="group-a") is None
        assert [d["name"] for d in (await do.droplets.list())["droplets"]] == ["b-1"]


async def test_power_off_completes_while_the_status_still_reads_active_for_a_moment(
    stand: Stand,
) -> None:
    async with stand.client() as do:
        droplet = await make_droplet(stand, do)
        action = (await do.droplet_actions.post(droplet["id"], {"type": "power_off"}))["action"]
        assert (await do.droplets.get(droplet["id"]))["droplet"]["locked"] is True
        await stand.advance(stand.world.delays.power_off)
        assert (await do.actions.get(action["id"]))["action"]["status"] == "completed"
        assert (await do.droplets.get(droplet["id"]))["droplet"]["status"] == "active"
        await stand.advance(stand.world.knobs.active_after_off)
        assert (await do.droplets.get(droplet["id"]))["droplet"]["status"] == "off"
        await do.droplet_actions.post(droplet["id"], {"type": "power_on"})
        await stand.advance(stand.world.delays.power_on)
        assert (await do.droplets.get(droplet["id"]))["droplet"]["status"] == "active"


async def test_a_second_action_on_a_busy_droplet_is_refused_as_a_pending_event(
    stand: Stand,
) -> None:
    async with stand.client() as do:
        droplet = await make_droplet(stand, do)
        await do.droplet_actions.post(droplet["id"], {"type": "reboot"})
        status, body = await refused(
            do.droplet_actions.post(droplet["id"], {"type": "snapshot", "name": "s"})
        )
        assert (status, body["id"]) == (422, "unprocessable_entity")
        assert "pending event" in body["message"]
        await stand.advance(stand.world.delays.reboot)
        await do.droplet_actions.post(droplet["id"], {"type": "snapshot", "name": "s"})


async def test_snapshot_rebuild_resize_and_rename_change_the_droplet(stand: Stand) -> None:
    async with stand.client() as do:
        droplet = await make_droplet(stand, do)
        snap = await do.droplet_actions.post(droplet["id"], {"type": "snapshot", "name": "gold"})
        await stand.advance(stand.world.delays.snapshot_per_gb * 3)
        assert (await do.actions.get(snap["action"]["id"]))["action"]["status"] == "completed"
        listed = (await do.droplets.list_snapshots(droplet["id"]))["snapshots"]
        assert [s["name"] for s in listed] == ["gold"]
        snapshot_id = listed[0]["id"]
        assert (await do.droplets.get(droplet["id"]))["droplet"]["snapshot_ids"] == [snapshot_id]

        await do.droplet_actions.post(droplet["id"], {"type": "rebuild", "image": snapshot_id})
        await stand.advance(stand.world.delays.rebuild + 100 * stand.world.delays.rebuild_per_gb)
        rebuilt = (await do.droplets.get(droplet["id"]))["droplet"]
        assert (rebuilt["image"]["id"], rebuilt["image"]["type"]) == (snapshot_id, "snapshot")
        assert rebuilt["networks"] == droplet["networks"]

        status, body = await refused(
            do.droplet_actions.post(droplet["id"], {"type": "resize", "size": "s-2vcpu-4gb"})
        )
        assert status == 422 and "powered off" in body["message"]
        await do.droplet_actions.post(droplet["id"], {"type": "power_off"})
        # One jump: the status follows from the action's due time, not from the jump's end.
        await stand.advance(stand.world.delays.power_off + stand.world.knobs.active_after_off)
        body_ = {"type": "resize", "size": "s-2vcpu-4gb", "disk": True}
        await do.droplet_actions.post(droplet["id"], body_)
        await stand.advance(1000)
        resized = (await do.droplets.get(droplet["id"]))["droplet"]
        assert (resized["size_slug"], resized["memory"], resized["disk"]) == (
            "s-2vcpu-4gb",
            4096,
            80,
        )

        await do.droplet_actions.post(droplet["id"], {"type": "rename", "name": "web-9"})
        await stand.advance(stand.world.delays.quick)
        assert (await do.droplets.get(droplet["id"]))["droplet"]["name"] == "web-9"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"type": "resize"}, "needs a size"),
        ({"type": "rebuild"}, "needs an image"),
        ({"type": "rebuild", "image": "no-such-image"}, "invalid image"),
    ],
)
async def test_actions_the_description_lets_through_are_still_checked(
    stand: Stand, body: dict[str, Any], words: str
) -> None:
    async with stand.client() as do:
        droplet = await make_droplet(stand, do)
        status, answer = await refused(do.droplet_actions.post(droplet["id"], body))
        assert status == 422 and words in answer["message"]


async def test_actions_by_tag_act_on_every_tagged_droplet(stand: Stand) -> None:
    async with stand.client() as do:
        await do.droplets.create({"names": ["t-1", "t-2"], **DROPLET, "tags": ["fleet"]})
        await stand.advance(stand.world.delays.create)
        answer = await do.droplet_actions.post_by_tag({"type": "power_off"}, tag_name="fleet")
        assert len(answer["actions"]) == 2
        await stand.advance(stand.world.delays.power_off)
        await stand.advance(stand.world.knobs.active_after_off)
        droplets = (await do.droplets.list(tag_name="fleet"))["droplets"]
        assert {d["status"] for d in droplets} == {"off"}


async def test_bad_requests_get_the_apis_error_shape_and_are_counted(stand: Stand) -> None:
    status, headers, body = await stand.raw("POST", "/v2/droplets", {"name": "x"})
    assert (status, body["id"]) == (422, "unprocessable_entity")
    assert "'size' is a required property" in body["message"]  # the closest branch's complaint
    status, _, body = await stand.raw("GET", "/v2/droplets?per_page=201")
    assert (status, body["id"]) == (400, "bad_request")
    status, _, body = await stand.raw("GET", "/v2/nothing-here")
    assert (status, body["id"]) == (404, "not_found")
    assert len(stand.invalid()) == 3
    too_big = {"name": "big", **DROPLET, "user_data": "#" * (64 * 1024 + 1)}
    status, _, body = await stand.raw("POST", "/v2/droplets", too_big)
    assert status == 422 and "64 KiB" in body["message"]
    status, _, body = await stand.raw(
        "POST", "/v2/droplets", {"name": "x", **DROPLET, "size": "s-99"}
    )
    assert status == 422 and "Size" in body["message"]
    status, _, body = await stand.raw("POST", "/v2/droplets", {"name": "a b", **DROPLET})
    assert status == 422  # the description's hostname pattern refuses it


async def test_every_answer_needs_the_token_and_carries_the_rate_limit_headers(
    stand: Stand,
) -> None:
    status, _, body = await stand.raw("GET", "/v2/account", token=None)
    assert (status, body["id"]) == (401, "Unauthorized")
    async with stand.client(token="dop_v1_wrong") as do:
        with pytest.raises(ClientAuthenticationError):
            await do.account.get()
    for path in ("/v2/account", "/v2/droplets/1", "/v2/regions"):
        status, headers, _ = await stand.raw("GET", path)
        assert status in (200, 404)
        assert int(headers["ratelimit-limit"]) == 5000
        assert 0 < int(headers["ratelimit-remaining"]) < 5000
        assert int(headers["ratelimit-reset"]) > 0
        assert "retry-after" not in headers


async def test_the_burst_limit_answers_429_with_retry_after_and_the_hourly_one_without(
    stand: Stand,
) -> None:
    stand.world.limiter.limits.per_minute = 5
    for _ in range(5):
        assert (await stand.raw("GET", "/v2/account"))[0] == 200
    status, headers, body = await stand.raw("GET", "/v2/account")
    assert (status, body["id"]) == (429, "too_many_requests")
    assert 0 < int(headers["retry-after"]) <= 60
    stand.world.limiter.reset()
    stand.world.limiter.limits.per_minute = 250
    stand.world.limiter.limits.per_hour = 3
    for _ in range(3):
        await stand.raw("GET", "/v2/account")
    status, headers, _ = await stand.raw("GET", "/v2/account")
    assert status == 429 and "retry-after" not in headers
    assert headers["ratelimit-remaining"] == "0"


async def test_listing_ssh_keys_is_limited_to_ten_a_minute(stand: Stand) -> None:
    for _ in range(10):
        assert (await stand.raw("GET", "/v2/account/keys"))[0] == 200
    status, headers, _ = await stand.raw("GET", "/v2/account/keys")
    assert status == 429 and "retry-after" in headers
    assert (await stand.raw("GET", "/v2/account"))[0] == 200


async def test_ssh_keys_are_found_by_id_or_fingerprint_renamed_and_deleted(stand: Stand) -> None:
    async with stand.client() as do:
        key = (await do.ssh_keys.create({"name": "ops", "public_key": public_key()}))["ssh_key"]
        assert (await do.ssh_keys.get(key["fingerprint"]))["ssh_key"]["id"] == key["id"]
        assert (await do.ssh_keys.update(key["id"], {"name": "ops-2"}))["ssh_key"][
            "name"
        ] == "ops-2"
        status, body = await refused(
            do.ssh_keys.create({"name": "again", "public_key": key["public_key"]})
        )
        assert status == 422 and "already in use" in body["message"]
        status, body = await refused(do.ssh_keys.create({"name": "bad", "public_key": "hello"}))
        assert status == 422
        await do.ssh_keys.delete(key["id"])
        assert (await do.ssh_keys.list())["ssh_keys"] == []
        status, body = await refused(
            do.droplets.create({"name": "w", **DROPLET, "ssh_keys": [key["id"]]})
        )
        assert status == 422 and "SSH key" in body["message"]


async def test_a_reserved_ip_is_assigned_moved_and_unassigned_by_actions(stand: Stand) -> None:
    async with stand.client() as do:
        one = await make_droplet(stand, do, "web-1")
        two = await make_droplet(stand, do, "web-2")
        made = await do.reserved_ips.create({"droplet_id": one["id"]})
        ip = made["reserved_ip"]["ip"]
        await stand.advance(stand.world.delays.reserved_ip)
        assert (await do.reserved_ips.get(ip))["reserved_ip"]["droplet"]["id"] == one["id"]
        status, body = await refused(do.reserved_ips_actions.post(ip, {"type": "assign"}))
        assert status == 422 and "droplet_id" in body["message"]
        move = await do.reserved_ips_actions.post(ip, {"type": "assign", "droplet_id": two["id"]})
        assert (await do.reserved_ips.get(ip))["reserved_ip"]["locked"] is True
        status, body = await refused(
            do.reserved_ips_actions.post(ip, {"type": "assign", "droplet_id": one["id"]})
        )
        assert status == 422 and "pending event" in body["message"]
        await stand.advance(stand.world.delays.reserved_ip)
        assert (await do.reserved_ips_actions.get(ip, move["action"]["id"]))["action"][
            "status"
        ] == "completed"
        assert (await do.reserved_ips.get(ip))["reserved_ip"]["droplet"]["id"] == two["id"]
        await do.reserved_ips_actions.post(ip, {"type": "unassign"})
        await stand.advance(stand.world.delays.reserved_ip)
        assert (await do.reserved_ips.get(ip))["reserved_ip"]["droplet"] is None
        assert len((await do.reserved_ips_actions.list(ip))["actions"]) == 3
        for _ in range(2):
            await do.reserved_ips.create({"region": "nyc3"})
        status, body = await refused(do.reserved_ips.create({"region": "nyc3"}))
        assert status == 422 and "limit" in body["message"]
        await do.reserved_ips.delete(ip)
        assert (await do.reserved_ips.list())["meta"]["total"] == 2


async def test_vpcs_are_made_renamed_listed_with_members_and_deleted(stand: Stand) -> None:
    async with stand.client() as do:
        vpc = (await do.vpcs.create({"name": "mesh", "region": "nyc3"}))["vpc"]
        droplet = await make_droplet(stand, do, vpc_uuid=vpc["id"])
        members = (await do.vpcs.list_members(vpc["id"]))["members"]
        assert [m["name"] for m in members] == [droplet["name"]]
        assert (await do.vpcs.patch(vpc["id"], {"name": "mesh-2"}))["vpc"]["name"] == "mesh-2"
        status, _ = await refused(do.vpcs.delete(vpc["id"]))
        assert status == 403
        await do.droplets.destroy(droplet["id"])
        await do.vpcs.delete(vpc["id"])
        other = await refused(do.droplets.create({"name": "w", **DROPLET, "region": "ams3",
                                                  "vpc_uuid": vpc["id"]}))  # fmt: skip
        assert other[0] == 422


async def test_tags_count_and_tag_resources(stand: Stand) -> None:
    async with stand.client() as do:
        droplet = await make_droplet(stand, do)
        await do.tags.create({"name": "role:web"})
        await do.tags.assign_resources(
            "role:web",
            {"resources": [{"resource_id": str(droplet["id"]), "resource_type": "droplet"}]},
        )
        tag = (await do.tags.get("role:web"))["tag"]
        assert tag["resources"]["droplets"]["count"] == 1
        assert "role:web" in (await do.droplets.get(droplet["id"]))["droplet"]["tags"]
        await do.tags.unassign_resources(
            "role:web",
            {"resources": [{"resource_id": str(droplet["id"]), "resource_type": "droplet"}]},
        )
        assert (await do.tags.get("role:web"))["tag"]["resources"]["count"] == 0
        await do.tags.delete("role:web")
        assert "tags" not in await do.tags.get("role:web")  # a 404 pydo hands back as a dict


async def test_knobs_make_a_new_droplet_404_and_lists_lag(stand: Stand) -> None:
    stand.world.knobs.get_404_after_create = 5
    stand.world.knobs.list_lag = 10
    async with stand.client() as do:
        droplet = (await do.droplets.create({"name": "w", **DROPLET}))["droplet"]
        assert (await do.droplets.get(droplet["id"]))["id"] == "not_found"
        assert (await do.droplets.list())["droplets"] == []
        await stand.advance(6)
        assert (await do.droplets.get(droplet["id"]))["droplet"]["id"] == droplet["id"]
        assert (await do.droplets.list())["droplets"] == []
        await stand.advance(5)
        assert len((await do.droplets.list())["droplets"]) == 1


async def test_faults_error_before_or_after_the_work_and_actions_can_error(stand: Stand) -> None:
    stand.world.faults.error_rate = 1.0
    status, _, body = await stand.raw("POST", "/v2/droplets", {"name": "w", **DROPLET})
    assert (status, body["id"]) == (503, "server_error")
    assert stand.world.droplets == {}
    stand.world.faults.error_rate = 0.0
    stand.world.faults.lost_rate = 1.0
    status, _, _ = await stand.raw("POST", "/v2/droplets", {"name": "w", **DROPLET})
    assert status == 503 and len(stand.world.droplets) == 1  # done, and the answer lost
    stand.world.faults.lost_rate = 0.0
    stand.world.faults.action_errors = {"power_off": 1}
    async with stand.client() as do:
        await stand.advance(stand.world.delays.create)
        droplet_id = next(iter(stand.world.droplets))
        action = (await do.droplet_actions.post(droplet_id, {"type": "power_off"}))["action"]
        await stand.advance(stand.world.delays.power_off)
        assert (await do.actions.get(action["id"]))["action"]["status"] == "errored"
        assert (await do.droplets.get(droplet_id))["droplet"]["locked"] is False


async def test_the_control_endpoint_changes_speed_delays_and_faults_and_logs_requests(
    stand: Stand,
) -> None:
    async with stand.client() as do:
        await do.account.get()
    status, _, settings = await stand.raw(
        "POST", "/_sim", {"speed": 20, "delays": {"create": 5}, "faults": {"error_rate": 0.5}}
    )
    assert status == 200 and settings["speed"] == 20 and settings["delays"]["create"] == 5
    assert stand.world.faults.error_rate == 0.5
    status, _, body = await stand.raw("POST", "/_sim", {"delays": {"nonsense": 1}})
    assert status == 400 and "nonsense" in body["message"]
    _, _, seen = await stand.raw("GET", "/_sim/requests")
    assert [(r["method"], r["path"], r["status"]) for r in seen["requests"]][0] == (
        "GET",
        "/v2/account",
        200,
    )


async def test_account_regions_and_sizes_carry_meshds_prices(stand: Stand) -> None:
    from meshd.core.sizes import SIZES

    async with stand.client() as do:
        assert (await do.account.get())["account"]["status"] == "active"
        sizes = (await do.sizes.list(per_page=200))["sizes"]
        assert {s["slug"]: s["price_monthly"] for s in sizes} == {
            slug: size.monthly_usd for slug, size in SIZES.items()
        }
        assert "nyc3" in {r["slug"] for r in (await do.regions.list())["regions"]}


async def test_a_tag_is_refused_in_the_shape_the_description_gives_that_operation(
    stand: Stand,
) -> None:
    headers = {"Authorization": f"Bearer {stand.token}", "Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{stand.url}/v2/tags", data=b"{not json", headers=headers) as answer,
    ):
        body = await answer.json()
    assert answer.status == 400 and set(body) == {"error", "messages", "root_causes"}
    status, _, body = await stand.raw("GET", "/v2/droplets?per_page=0")
    assert (status, body["id"]) == (400, "bad_request")  # the usual shape everywhere else
