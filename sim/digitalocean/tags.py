"""Tags: made when first named (by a droplet, a volume, a firewall or `POST /v2/tags`), and
tagging or untagging resources by type and id."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from sim.digitalocean.http import (
    ApiError,
    body_of,
    no_content,
    not_found,
    page,
    reply,
    unprocessable,
    world_of,
)
from sim.digitalocean.world import World

routes = web.RouteTableDef()
TAG_NAME = re.compile(r"^[a-zA-Z0-9_\-:]{1,255}$")


def ensure_tags(world: World, names: list[str]) -> None:
    for name in names:
        if not TAG_NAME.match(name):
            raise unprocessable(
                f"Tag {name!r} is invalid: letters, numbers, '_', '-' and ':' (≤ 255)."
            )
        world.tags.setdefault(name, {"name": name})


def tag_document(world: World, name: str) -> dict[str, Any]:
    droplets = [d for d in world.droplets.values() if name in d["tags"]]
    volumes = [v for v in world.volumes.values() if name in (v.get("tags") or [])]
    last = f"/v2/droplets/{droplets[-1]['id']}" if droplets else ""
    return {
        "name": name,
        "resources": {
            "count": len(droplets) + len(volumes),
            "last_tagged_uri": last,
            "droplets": {"count": len(droplets), "last_tagged_uri": last},
            "imgages": {"count": 0, "last_tagged_uri": ""},
            "volumes": {"count": len(volumes), "last_tagged_uri": ""},
            "volume_snapshots": {"count": 0, "last_tagged_uri": ""},
            "databases": {"count": 0, "last_tagged_uri": ""},
        },
    }


@routes.get("/v2/tags")
async def list_tags(request: web.Request) -> web.Response:
    world = world_of(request)
    return reply(page(request, "tags", [tag_document(world, n) for n in world.tags]))


def root_cause_error(message: str) -> web.Response:
    """A 400 in the shape making a tag has (`{error, messages, root_causes}`)."""
    return reply({"error": message, "messages": None, "root_causes": [message]}, 400)


@routes.post("/v2/tags")
async def create_tag(request: web.Request) -> web.Response:
    world = world_of(request)
    name = body_of(request)["name"]
    try:
        ensure_tags(world, [name])
    except ApiError as err:
        return root_cause_error(f"Error validating resource tag: {err.message}")
    return reply({"tag": tag_document(world, name)}, 201)


@routes.get("/v2/tags/{tag_id}")
async def get_tag(request: web.Request) -> web.Response:
    world = world_of(request)
    name = request.match_info["tag_id"]
    if name not in world.tags:
        raise not_found()
    return reply({"tag": tag_document(world, name)})


@routes.delete("/v2/tags/{tag_id}")
async def delete_tag(request: web.Request) -> web.Response:
    world = world_of(request)
    name = request.match_info["tag_id"]
    if world.tags.pop(name, None) is None:
        raise not_found()
    for resource in [*world.droplets.values(), *world.volumes.values()]:
        if name in (resource.get("tags") or []):
            resource["tags"].remove(name)
    for firewall in world.firewalls.values():
        if name in firewall["tags"]:
            firewall["tags"].remove(name)
        for rule in [*firewall["inbound_rules"], *firewall["outbound_rules"]]:
            for end in ("sources", "destinations"):
                named = rule.get(end, {}).get("tags")
                if named and name in named:
                    named.remove(name)
    await _tags_changed(world)
    return no_content()


@routes.post("/v2/tags/{tag_id}/resources")
async def tag_resources(request: web.Request) -> web.Response:
    await _retag(request, add=True)
    return no_content()


@routes.delete("/v2/tags/{tag_id}/resources")
async def untag_resources(request: web.Request) -> web.Response:
    await _retag(request, add=False)
    return no_content()


async def _retag(request: web.Request, add: bool) -> None:
    world = world_of(request)
    name = request.match_info["tag_id"]
    if name not in world.tags:
        raise not_found()
    targets = []
    for resource in body_of(request)["resources"]:
        if not isinstance(resource, dict):
            raise unprocessable("Each resource is an object with resource_id and resource_type.")
        kind, rid = resource.get("resource_type"), str(resource.get("resource_id"))
        if kind == "droplet" and rid.isdigit() and int(rid) in world.droplets:
            targets.append(world.droplets[int(rid)])
        elif kind == "volume" and rid in world.volumes:
            targets.append(world.volumes[rid])
        else:
            raise unprocessable(f"{kind} {rid} does not exist or cannot be tagged.")
    for target in targets:
        tags = target.setdefault("tags", [])
        if add and name not in tags:
            tags.append(name)
        elif not add and name in tags:
            tags.remove(name)
    await _tags_changed(world)


async def _tags_changed(world: World) -> None:
    """Firewalls name droplets by tag: enforce them again."""
    from sim.digitalocean.firewalls import enforce

    await enforce(world)
