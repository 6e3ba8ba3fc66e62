"""Block storage volumes: create (empty, or from a volume snapshot), list, get, delete (by id,
or by name and region); attach, detach and resize as actions (by id, or by name); a volume's
snapshots.

As on DigitalOcean: a volume's name is unique in its region; it attaches to one droplet at a
time, of its own region, and a droplet has at most 15 volumes; an attached volume cannot be
deleted (409); a volume only grows; a second action while one is under way is refused with
"already has a pending event". Volume actions carry `resource_id` null (as DigitalOcean's do),
so a volume keeps its own list of actions (`_actions`, not shown).
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from aiohttp import web

from sim.digitalocean import catalog
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
from sim.digitalocean.tags import ensure_tags
from sim.digitalocean.world import Finish, World

routes = web.RouteTableDef()
NAME = re.compile(r"^[a-z][a-z0-9-]{0,63}$")
MAX_GB = 16384
VOLUMES_PER_DROPLET = 15


def _view(volume: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in volume.items() if not k.startswith("_")}


def _find(world: World, volume_id: str) -> dict[str, Any]:
    return existing(world.volumes, volume_id)


def _by_name(world: World, name: str | None, region: str | None) -> dict[str, Any]:
    found = [
        v
        for v in world.volumes.values()
        if v["name"] == name and (region is None or v["region"]["slug"] == region)
    ]
    if not found:
        raise not_found()
    if len(found) > 1:
        raise unprocessable(f"Volumes named {name!r} are in several regions: name the region.")
    return found[0]


def on_droplet_gone_volumes(world: World, droplet_id: int) -> None:
    """A destroyed droplet's volumes are detached (its machine goes with it)."""
    for volume in world.volumes.values():
        if droplet_id in volume["droplet_ids"]:
            volume["droplet_ids"] = []


# Volumes ------------------------------------------------------------------------------------


@routes.get("/v2/volumes")
async def list_volumes(request: web.Request) -> web.Response:
    world = world_of(request)
    name, region = request.query.get("name"), request.query.get("region")
    found = [
        _view(v)
        for v in world.volumes.values()
        if (name is None or v["name"] == name) and (region is None or v["region"]["slug"] == region)
    ]
    return reply(page(request, "volumes", found))


@routes.post("/v2/volumes")
async def create(request: web.Request) -> web.Response:
    world = world_of(request)
    body = body_of(request)
    name, region, size = body["name"], body["region"], body["size_gigabytes"]
    if region not in catalog.REGIONS:
        raise unprocessable(f"Region {region!r} is not available.")
    if not NAME.match(name):
        raise unprocessable(
            f"Name {name!r} is invalid: lowercase letters, numbers and hyphens, starting "
            "with a letter, at most 64 characters."
        )
    if not 1 <= size <= MAX_GB:
        raise unprocessable(f"size_gigabytes must be between 1 and {MAX_GB}.")
    if any(v["name"] == name and v["region"]["slug"] == region for v in world.volumes.values()):
        raise ApiError(409, "conflict", f"A volume named {name!r} exists already in {region}.")
    snapshot_id = body.get("snapshot_id")
    if snapshot_id:
        _check_source(world, snapshot_id, region, size)
    tags = body.get("tags") or []
    ensure_tags(world, tags)
    volume = {
        "id": str(uuid.uuid4()),
        "region": catalog.region_document(region),
        "droplet_ids": [],
        "name": name,
        "description": body.get("description") or "",
        "size_gigabytes": size,
        "created_at": world.clock.stamp(),
        "filesystem_type": body.get("filesystem_type") or "",
        "filesystem_label": body.get("filesystem_label") or "",
        "tags": list(tags),
        "_actions": [],
    }
    world.volumes[volume["id"]] = volume
    return reply({"volume": _view(volume)}, 201)


def _check_source(world: World, snapshot_id: str, region: str, size: int) -> None:
    snapshot = world.snapshots.get(snapshot_id)
    if snapshot is None or snapshot["resource_type"] != "volume":
        raise not_found(f"Snapshot {snapshot_id!r} not found.")
    if region not in snapshot["regions"]:
        raise unprocessable(f"Snapshot {snapshot_id!r} is not available in {region}.")
    if size < snapshot["min_disk_size"]:
        raise unprocessable(
            f"size_gigabytes must be at least the snapshot's {snapshot['min_disk_size']}."
        )


@routes.get("/v2/volumes/{volume_id}")
async def get_volume(request: web.Request) -> web.Response:
    world = world_of(request)
    return reply({"volume": _view(_find(world, request.match_info["volume_id"]))})


@routes.delete("/v2/volumes/{volume_id}")
async def delete(request: web.Request) -> web.Response:
    world = world_of(request)
    await _delete(world, _find(world, request.match_info["volume_id"]))
    return no_content()


@routes.delete("/v2/volumes")
async def delete_by_name(request: web.Request) -> web.Response:
    world = world_of(request)
    name, region = request.query.get("name"), request.query.get("region")
    if not name or not region:
        raise ApiError(400, "bad_request", "Deleting a volume by name needs name and region.")
    await _delete(world, _by_name(world, name, region))
    return no_content()


async def _delete(world: World, volume: dict[str, Any]) -> None:
    if volume["droplet_ids"]:
        raise ApiError(409, "conflict", "attached volume can not be deleted")
    if world.running(volume["_actions"]):
        raise unprocessable("Volume already has a pending event.")
    del world.volumes[volume["id"]]
    await world.machines.delete_volume(volume["id"])


# Actions ------------------------------------------------------------------------------------


@routes.post("/v2/volumes/{volume_id}/actions")
async def act(request: web.Request) -> web.Response:
    world = world_of(request)
    volume = _find(world, request.match_info["volume_id"])
    return reply({"action": _start(world, volume, body_of(request))}, 202)


@routes.post("/v2/volumes/actions")
async def act_by_name(request: web.Request) -> web.Response:
    world = world_of(request)
    body = body_of(request)
    if body["type"] not in ("attach", "detach"):
        raise unprocessable("Only attach and detach can be taken by volume name.")
    if not body.get("volume_name"):
        raise unprocessable("An action by volume name needs volume_name.")
    volume = _by_name(world, body["volume_name"], body.get("region"))
    return reply({"action": _start(world, volume, body)}, 202)


@routes.get("/v2/volumes/{volume_id}/actions")
async def list_actions(request: web.Request) -> web.Response:
    world = world_of(request)
    volume = _find(world, request.match_info["volume_id"])
    return reply(page(request, "actions", [world.actions[a] for a in volume["_actions"]]))


@routes.get("/v2/volumes/{volume_id}/actions/{action_id}")
async def get_action(request: web.Request) -> web.Response:
    world = world_of(request)
    volume = _find(world, request.match_info["volume_id"])
    action_id = int_path(request, "action_id")
    if action_id not in volume["_actions"]:
        raise not_found()
    return reply({"action": world.actions[action_id]})


def _start(world: World, volume: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    kind = body["type"]
    region = volume["region"]["slug"]
    if body.get("region") and body["region"] != region:
        raise unprocessable(f"The volume is in {region}, not in {body['region']}.")
    if world.running(volume["_actions"]):
        raise unprocessable("Volume already has a pending event.")
    if kind == "resize":
        finish = _resize(volume, body.get("size_gigabytes"))
    else:
        if "droplet_id" not in body:
            raise unprocessable(f"{kind} needs a droplet_id.")
        droplet_id = body["droplet_id"]
        if kind == "attach":
            finish = _attach(world, volume, droplet_id)
        else:
            finish = _detach(world, volume, droplet_id)
    action = world.start_action(
        f"{kind}_volume", "volume", None, region, world.delays.volume, finish
    )
    volume["_actions"].append(action["id"])
    return action


def _attach(world: World, volume: dict[str, Any], droplet_id: int) -> Finish:
    droplet = world.droplets.get(droplet_id)
    if droplet is None:
        raise not_found(f"Droplet {droplet_id} not found.")
    if volume["droplet_ids"] == [droplet_id]:
        raise unprocessable("Volume is already attached to this Droplet.")
    if volume["droplet_ids"]:
        raise unprocessable("Volume is already attached to another Droplet.")
    if droplet["region"]["slug"] != volume["region"]["slug"]:
        raise unprocessable("Volume and Droplet must be in the same region.")
    if droplet["status"] == "new" or world.busy("droplet", droplet_id):
        raise unprocessable("Droplet already has a pending event.")
    # Attaches under way count: fifteen started at once must not make sixteen.
    attaching = sum(
        1
        for other in world.volumes.values()
        if other.get("_attaching") == droplet_id and world.running(other["_actions"])
    )
    if len(droplet["volume_ids"]) + attaching >= VOLUMES_PER_DROPLET:
        raise unprocessable(f"A Droplet can have at most {VOLUMES_PER_DROPLET} volumes attached.")
    volume["_attaching"] = droplet_id

    async def attach() -> None:
        if droplet_id not in world.droplets:
            raise MachineError(f"droplet {droplet_id} is gone")
        await world.machines.attach_volume(volume["id"], volume["name"], droplet_id)
        volume["droplet_ids"] = [droplet_id]
        if volume["id"] not in droplet["volume_ids"]:
            droplet["volume_ids"].append(volume["id"])

    return attach


def _detach(world: World, volume: dict[str, Any], droplet_id: int) -> Finish:
    if droplet_id not in volume["droplet_ids"]:
        raise not_found("error detaching volume from droplet: volume is not attached to droplet")

    async def detach() -> None:
        droplet = world.droplets.get(droplet_id)
        if droplet is not None:
            await world.machines.detach_volume(volume["id"], droplet_id)
            if volume["id"] in droplet["volume_ids"]:
                droplet["volume_ids"].remove(volume["id"])
        volume["droplet_ids"] = [i for i in volume["droplet_ids"] if i != droplet_id]

    return detach


def _resize(volume: dict[str, Any], size: int | None) -> Finish:
    if size is None:
        raise unprocessable("resize needs size_gigabytes.")
    if size <= volume["size_gigabytes"]:
        raise unprocessable(
            f"A volume can only grow: size_gigabytes must be over {volume['size_gigabytes']}."
        )
    if size > MAX_GB:
        raise unprocessable(f"size_gigabytes must be at most {MAX_GB}.")

    async def resize() -> None:
        volume["size_gigabytes"] = size

    return resize


# Volume snapshots ---------------------------------------------------------------------------


@routes.get("/v2/volumes/{volume_id}/snapshots")
async def list_snapshots(request: web.Request) -> web.Response:
    world = world_of(request)
    volume = _find(world, request.match_info["volume_id"])
    found = [
        s
        for s in world.snapshots.values()
        if s["resource_type"] == "volume" and s["resource_id"] == volume["id"]
    ]
    return reply(page(request, "snapshots", found))


@routes.post("/v2/volumes/{volume_id}/snapshots")
async def take_snapshot(request: web.Request) -> web.Response:
    """At once, as on DigitalOcean. The stand-in keeps no copy of the volume's files (the
    machines have no such operation): a volume made from the snapshot starts empty."""
    world = world_of(request)
    volume = _find(world, request.match_info["volume_id"])
    body = body_of(request)
    tags = body.get("tags") or []
    ensure_tags(world, tags)
    snapshot = {
        "id": str(uuid.uuid4()),
        "name": body["name"],
        "created_at": world.clock.stamp(),
        "regions": [volume["region"]["slug"]],
        "min_disk_size": volume["size_gigabytes"],
        "size_gigabytes": 0.0,
        "resource_id": volume["id"],
        "resource_type": "volume",
        "tags": list(tags),
    }
    world.snapshots[snapshot["id"]] = snapshot
    return reply({"snapshot": snapshot}, 201)


def _volume_snapshot(world: World, snapshot_id: str) -> dict[str, Any]:
    snapshot = world.snapshots.get(snapshot_id)
    if snapshot is None or snapshot["resource_type"] != "volume":
        raise not_found()
    return snapshot


@routes.get("/v2/volumes/snapshots/{snapshot_id}")
async def get_snapshot(request: web.Request) -> web.Response:
    world = world_of(request)
    return reply({"snapshot": _volume_snapshot(world, request.match_info["snapshot_id"])})


@routes.delete("/v2/volumes/snapshots/{snapshot_id}")
async def delete_snapshot(request: web.Request) -> web.Response:
    world = world_of(request)
    del world.snapshots[_volume_snapshot(world, request.match_info["snapshot_id"])["id"]]
    return no_content()
