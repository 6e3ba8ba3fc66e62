"""Droplets: create (one or up to ten names), list, get, destroy (one, or all of a tag), and
the lists hanging off one droplet (snapshots, firewalls)."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from sim.digitalocean import catalog
from sim.digitalocean.droplet_docs import (
    address,
    find,
    free_host,
    image_document,
    machine_spec,
    networks,
    public_view,
    size_fields,
    tagged,
)
from sim.digitalocean.firewalls import enforce
from sim.digitalocean.http import (
    ApiError,
    body_of,
    int_path,
    no_content,
    not_found,
    page,
    reply,
    unprocessable,
    world_of,
)
from sim.digitalocean.keys import public_keys
from sim.digitalocean.networking import default_vpc, on_droplet_gone
from sim.digitalocean.tags import ensure_tags
from sim.digitalocean.world import DropletFacts, World

routes = web.RouteTableDef()
HOSTNAME = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9.-]{0,251}[a-zA-Z0-9])?$")
USER_DATA_MAX = 64 * 1024
NAMES_MAX = 10


@routes.post("/v2/droplets")
async def create(request: web.Request) -> web.Response:
    world = world_of(request)
    body = body_of(request)
    names = body["names"] if "names" in body else [body["name"]]
    region = body.get("region") or "nyc3"
    _check_create(world, body, names, region)
    image = image_document(world, body["image"])
    keys = public_keys(world, body.get("ssh_keys") or [])
    vpc = body.get("vpc_uuid") or default_vpc(world, region)["id"]
    tags = body.get("tags") or []
    ensure_tags(world, tags)
    made, actions = [], []
    for name in names:
        droplet = _new_droplet(world, name, region, body["size"], image, tags, vpc)
        world.facts[droplet["id"]] = DropletFacts(
            created=world.clock.now(),
            user_data=body.get("user_data"),
            public_keys=keys,
            used_gb=float(image["size_gigabytes"] or 1.0),
        )
        actions.append(_start_create(world, droplet, image))
        made.append(public_view(droplet))
    await enforce(world)  # firewalls naming its tags: theirs now, other droplets' sources too
    links = {
        "actions": [
            {"id": a["id"], "rel": "create", "href": f"{request.url.origin()}/v2/actions/{a['id']}"}
            for a in actions
        ]
    }
    if "names" in body:
        return reply({"droplets": made, "links": links}, 202)
    return reply({"droplet": made[0], "links": links}, 202)


def _check_create(world: World, body: dict[str, Any], names: list[str], region: str) -> None:
    """What the description cannot say: names, region, size, user data, limits, the VPC."""
    if not names or len(names) > NAMES_MAX:
        raise unprocessable(f"You can create between 1 and {NAMES_MAX} Droplets at a time.")
    for name in names:
        if not isinstance(name, str) or not HOSTNAME.match(name):
            raise unprocessable(
                f"Name {name!r} is invalid: only letters, numbers, dots and dashes."
            )
    if region not in catalog.REGIONS:
        raise unprocessable(f"Region {region!r} is not available.")
    if body["size"] not in catalog.size_slugs():
        raise unprocessable(f"Size {body['size']!r} is not available.")
    if len(str(body.get("user_data") or "").encode()) > USER_DATA_MAX:
        raise unprocessable("user_data is over the limit of 64 KiB.")
    if len(world.droplets) + len(names) > world.knobs.droplet_limit:
        raise ApiError(
            422,
            "unprocessable_entity",
            f"creating this/these droplet(s) will exceed your droplet limit "
            f"({world.knobs.droplet_limit}).",
        )
    vpc_uuid = body.get("vpc_uuid")
    if vpc_uuid:
        vpc = world.vpcs.get(vpc_uuid)
        if vpc is None:
            raise unprocessable(f"VPC {vpc_uuid!r} does not exist.")
        if vpc["region"] != region:
            raise unprocessable(f"VPC {vpc_uuid!r} is in {vpc['region']}, not in {region}.")


def _new_droplet(
    world: World,
    name: str,
    region: str,
    size: str,
    image: dict[str, Any],
    tags: list[str],
    vpc: str,
) -> dict[str, Any]:
    host = free_host(world)
    nets = world.machines.networks
    droplet: dict[str, Any] = {
        "id": world.next_id("droplet"),
        "name": name,
        **size_fields(size),
        "locked": True,
        "status": "new",
        "kernel": None,
        "created_at": world.clock.stamp(),
        "features": ["private_networking"],
        "backup_ids": [],
        "next_backup_window": None,
        "snapshot_ids": [],
        "image": image,
        "volume_ids": [],
        "networks": {"v4": [], "v6": []},
        "region": catalog.region_document(region),
        "tags": list(tags),
        "vpc_uuid": vpc,
        "_addresses": {"public": f"{nets.public}.{host}", "private": f"{nets.private}.{host}"},
    }
    world.droplets[droplet["id"]] = droplet
    return droplet


def _start_create(world: World, droplet: dict[str, Any], image: dict[str, Any]) -> dict[str, Any]:
    snapshot_id = image["id"] if image["type"] == "snapshot" else None

    async def finish() -> None:
        await world.machines.create(machine_spec(world, droplet), snapshot_id)
        droplet["status"] = "active"
        droplet["networks"] = networks(
            world, address(droplet, "public"), address(droplet, "private")
        )

    def after() -> None:
        droplet["locked"] = False

    return world.start_action(
        "create",
        "droplet",
        droplet["id"],
        droplet["region"]["slug"],
        world.delays.create,
        finish,
        after,
    )


@routes.get("/v2/droplets")
async def list_droplets(request: web.Request) -> web.Response:
    world = world_of(request)
    settled = world.clock.now() - world.knobs.list_lag
    found = [
        public_view(d)
        for d in world.droplets.values()
        if world.facts[d["id"]].created <= settled
        and ("tag_name" not in request.query or request.query["tag_name"] in d["tags"])
        and ("name" not in request.query or request.query["name"] == d["name"])
    ]
    return reply(page(request, "droplets", found))


@routes.get("/v2/droplets/{droplet_id}")
async def get_droplet(request: web.Request) -> web.Response:
    world = world_of(request)
    droplet = find(world, int_path(request, "droplet_id"))
    if world.clock.now() - world.facts[droplet["id"]].created < world.knobs.get_404_after_create:
        raise not_found()
    return reply({"droplet": public_view(droplet)})


@routes.delete("/v2/droplets/{droplet_id}")
async def destroy(request: web.Request) -> web.Response:
    world = world_of(request)
    await _destroy(world, find(world, int_path(request, "droplet_id")))
    return no_content()


@routes.delete("/v2/droplets")
async def destroy_tagged(request: web.Request) -> web.Response:
    world = world_of(request)
    tag = request.query.get("tag_name")
    if not tag:
        raise ApiError(400, "bad_request", "Destroying droplets needs tag_name.")
    for droplet in tagged(world, tag):
        await _destroy(world, droplet)
    return no_content()


async def _destroy(world: World, droplet: dict[str, Any]) -> None:
    world.droplets.pop(droplet["id"])
    world.facts.pop(droplet["id"], None)
    await on_droplet_gone(world, droplet["id"])
    await world.machines.destroy(droplet["id"])


@routes.get("/v2/droplets/{droplet_id}/snapshots")
async def list_snapshots(request: web.Request) -> web.Response:
    world = world_of(request)
    droplet = find(world, int_path(request, "droplet_id"))
    found = [
        {
            "id": int(s["id"]),
            "name": s["name"],
            "distribution": "Debian",
            "slug": None,
            "public": False,
            "regions": s["regions"],
            "created_at": s["created_at"],
            "type": "snapshot",
            "min_disk_size": s["min_disk_size"],
            "size_gigabytes": s["size_gigabytes"],
        }
        for s in world.snapshots.values()
        if s["resource_type"] == "droplet" and s["resource_id"] == str(droplet["id"])
    ]
    return reply(page(request, "snapshots", found))
