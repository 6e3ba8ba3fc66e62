"""Reserved IPs (at most three, assigned and unassigned by actions) and VPCs (one default per
region, the stand-in's private bridge), and what becomes of both when a droplet goes."""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from sim.digitalocean import catalog
from sim.digitalocean.droplet_docs import public_view
from sim.digitalocean.http import (
    ApiError,
    body_of,
    existing,
    int_path,
    no_content,
    not_found,
    page,
    reply,
    unprocessable,
    world_of,
)
from sim.digitalocean.machines import MachineError
from sim.digitalocean.world import World

routes = web.RouteTableDef()
RESERVED_FIRST, RESERVED_LAST = 200, 249
RESERVED_LIMIT = 3


# Reserved IPs ----------------------------------------------------------------------------


def _reserved_view(world: World, record: dict[str, Any]) -> dict[str, Any]:
    holder = record["_droplet_id"]
    droplet = world.droplets.get(holder) if holder is not None else None
    return {
        "ip": record["ip"],
        "region": catalog.region_document(record["_region"]),
        "droplet": public_view(droplet) if droplet is not None else None,
        "locked": world.running(record.get("_actions", [])),
        "project_id": world.account_uuid,
    }


def _find_reserved(world: World, ip: str) -> dict[str, Any]:
    return existing(world.reserved_ips, ip)


@routes.get("/v2/reserved_ips")
async def list_reserved(request: web.Request) -> web.Response:
    world = world_of(request)
    found = [_reserved_view(world, r) for r in world.reserved_ips.values()]
    return reply(page(request, "reserved_ips", found))


@routes.post("/v2/reserved_ips")
async def create_reserved(request: web.Request) -> web.Response:
    world = world_of(request)
    body = body_of(request)
    if len(world.reserved_ips) >= RESERVED_LIMIT:
        raise unprocessable(f"You have reached the limit of {RESERVED_LIMIT} reserved IPs.")
    taken = set(world.reserved_ips)
    prefix = world.machines.networks.public
    ip = next(
        f"{prefix}.{n}"
        for n in range(RESERVED_FIRST, RESERVED_LAST + 1)
        if f"{prefix}.{n}" not in taken
    )
    if "droplet_id" in body:
        droplet = _assignable(world, body["droplet_id"])
        region = droplet["region"]["slug"]
    else:
        droplet, region = None, body["region"]
        if region not in catalog.REGIONS:
            raise unprocessable(f"Region {region!r} is not available.")
    record = {"ip": ip, "_region": region, "_droplet_id": None}
    world.reserved_ips[ip] = record
    links: dict[str, Any] = {}
    if droplet is not None:
        action = _start_assign(world, record, droplet["id"])
        record["_actions"] = [action["id"]]
        links = {"actions": [{"id": action["id"], "rel": "assign_ip", "href": ""}]}
    return reply({"reserved_ip": _reserved_view(world, record), "links": links}, 202)


def _assignable(world: World, droplet_id: int) -> dict[str, Any]:
    droplet = world.droplets.get(droplet_id)
    if droplet is None:
        raise unprocessable(f"Droplet {droplet_id} does not exist.")
    if droplet["status"] == "new":
        raise unprocessable("The droplet is still being created.")
    return droplet


def _start_assign(world: World, record: dict[str, Any], droplet_id: int | None) -> dict[str, Any]:
    async def finish() -> None:
        if droplet_id is not None and droplet_id not in world.droplets:
            raise MachineError(f"droplet {droplet_id} is gone")
        await world.machines.assign_reserved_ip(record["ip"], droplet_id)
        record["_droplet_id"] = droplet_id

    kind = "assign_ip" if droplet_id is not None else "unassign_ip"
    return world.start_action(
        kind, "reserved_ip", None, record["_region"], world.delays.reserved_ip, finish
    )


@routes.get("/v2/reserved_ips/{reserved_ip}")
async def get_reserved(request: web.Request) -> web.Response:
    world = world_of(request)
    record = _find_reserved(world, request.match_info["reserved_ip"])
    return reply({"reserved_ip": _reserved_view(world, record)})


@routes.delete("/v2/reserved_ips/{reserved_ip}")
async def delete_reserved(request: web.Request) -> web.Response:
    world = world_of(request)
    record = _find_reserved(world, request.match_info["reserved_ip"])
    if record["_droplet_id"] is not None:
        await world.machines.assign_reserved_ip(record["ip"], None)
    del world.reserved_ips[record["ip"]]
    return no_content()


@routes.post("/v2/reserved_ips/{reserved_ip}/actions")
async def act_reserved(request: web.Request) -> web.Response:
    world = world_of(request)
    record = _find_reserved(world, request.match_info["reserved_ip"])
    body = body_of(request)
    if world.running(record.get("_actions", [])):
        raise unprocessable("The reserved IP already has a pending event.")
    if body["type"] == "assign":
        if "droplet_id" not in body:
            raise unprocessable("assign needs a droplet_id.")
        droplet = _assignable(world, body["droplet_id"])
        if droplet["region"]["slug"] != record["_region"]:
            raise unprocessable("The droplet is in another region than the reserved IP.")
        action = _start_assign(world, record, droplet["id"])
    else:
        if record["_droplet_id"] is None:
            raise unprocessable("The reserved IP is not assigned to a droplet.")
        action = _start_assign(world, record, None)
    record.setdefault("_actions", []).append(action["id"])
    return reply({"action": action}, 201)


@routes.get("/v2/reserved_ips/{reserved_ip}/actions")
async def list_reserved_actions(request: web.Request) -> web.Response:
    world = world_of(request)
    record = _find_reserved(world, request.match_info["reserved_ip"])
    found = [world.actions[a] for a in record.get("_actions", [])]
    return reply(page(request, "actions", found))


@routes.get("/v2/reserved_ips/{reserved_ip}/actions/{action_id}")
async def get_reserved_action(request: web.Request) -> web.Response:
    world = world_of(request)
    record = _find_reserved(world, request.match_info["reserved_ip"])
    action_id = int_path(request, "action_id")
    if action_id not in record.get("_actions", []):
        raise not_found()
    return reply({"action": world.actions[action_id]})


# VPCs -------------------------------------------------------------------------------------


def default_vpc(world: World, region: str) -> dict[str, Any]:
    """The region's default VPC, made on first use (DigitalOcean makes one per region)."""
    for vpc in world.vpcs.values():
        if vpc["region"] == region and vpc["default"]:
            return vpc
    return _new_vpc(world, f"default-{region}", region, "", default=True)


def _new_vpc(
    world: World, name: str, region: str, description: str, default: bool
) -> dict[str, Any]:
    vpc_id = str(uuid.uuid4())
    vpc = {
        "id": vpc_id,
        "urn": f"do:vpc:{vpc_id}",
        "name": name,
        "description": description,
        "region": region,
        "ip_range": f"{world.machines.networks.private}.0/24",
        "default": default,
        "created_at": world.clock.stamp(),
    }
    world.vpcs[vpc_id] = vpc
    return vpc


def _find_vpc(world: World, vpc_id: str) -> dict[str, Any]:
    return existing(world.vpcs, vpc_id)


@routes.get("/v2/vpcs")
async def list_vpcs(request: web.Request) -> web.Response:
    return reply(page(request, "vpcs", list(world_of(request).vpcs.values())))


@routes.post("/v2/vpcs")
async def create_vpc(request: web.Request) -> web.Response:
    world = world_of(request)
    body = body_of(request)
    if body["region"] not in catalog.REGIONS:
        raise unprocessable(f"Region {body['region']!r} is not available.")
    if any(v["name"] == body["name"] for v in world.vpcs.values()):
        raise unprocessable(f"A VPC named {body['name']!r} exists already.")
    # Every VPC of the stand-in is its one private bridge: the range asked for is not honoured.
    vpc = _new_vpc(world, body["name"], body["region"], body.get("description", ""), False)
    return reply({"vpc": vpc}, 201)


@routes.get("/v2/vpcs/{vpc_id}")
async def get_vpc(request: web.Request) -> web.Response:
    return reply({"vpc": _find_vpc(world_of(request), request.match_info["vpc_id"])})


@routes.put("/v2/vpcs/{vpc_id}")
@routes.patch("/v2/vpcs/{vpc_id}")
async def update_vpc(request: web.Request) -> web.Response:
    world = world_of(request)
    vpc = _find_vpc(world, request.match_info["vpc_id"])
    body = body_of(request)
    for key in ("name", "description", "default"):
        if key in body:
            vpc[key] = body[key]
    return reply({"vpc": vpc})


@routes.delete("/v2/vpcs/{vpc_id}")
async def delete_vpc(request: web.Request) -> web.Response:
    world = world_of(request)
    vpc = _find_vpc(world, request.match_info["vpc_id"])
    if vpc["default"]:
        raise ApiError(403, "forbidden", "A default VPC cannot be deleted.")
    if any(d.get("vpc_uuid") == vpc["id"] for d in world.droplets.values()):
        raise ApiError(403, "forbidden", "The VPC still has members.")
    del world.vpcs[vpc["id"]]
    return no_content()


@routes.get("/v2/vpcs/{vpc_id}/members")
async def vpc_members(request: web.Request) -> web.Response:
    world = world_of(request)
    vpc = _find_vpc(world, request.match_info["vpc_id"])
    members = [
        {"name": d["name"], "urn": f"do:droplet:{d['id']}", "created_at": d["created_at"]}
        for d in world.droplets.values()
        if d.get("vpc_uuid") == vpc["id"]
    ]
    return reply(page(request, "members", members))


# A droplet goes -------------------------------------------------------------------------------


async def on_droplet_gone(world: World, droplet_id: int) -> None:
    """Unassign its reserved IPs, detach its volumes, drop it from firewalls."""
    from sim.digitalocean.firewalls import enforce, on_droplet_gone_firewalls
    from sim.digitalocean.volumes import on_droplet_gone_volumes

    for record in world.reserved_ips.values():
        if record["_droplet_id"] == droplet_id:
            record["_droplet_id"] = None
            await world.machines.assign_reserved_ip(record["ip"], None)
    on_droplet_gone_volumes(world, droplet_id)
    on_droplet_gone_firewalls(world, droplet_id)
    await enforce(world)
