"""Images (the distributions of the catalog, and droplet snapshots as images of type
`snapshot`) and snapshots (droplet and volume snapshots alike, `/v2/snapshots`).

A distribution image is public: it cannot be renamed, deleted or transferred (403). Custom
images (`POST /v2/images`, an import from a URL) are not supported: 422. Of the image actions,
`transfer` copies a snapshot into another region; `convert` turns backups into snapshots and
the stand-in has no backups: 422.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from sim.digitalocean import catalog
from sim.digitalocean.droplet_docs import snapshot_image
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
from sim.digitalocean.world import World

routes = web.RouteTableDef()


def _forbidden() -> ApiError:
    return ApiError(403, "forbidden", "You do not have access for the attempted action.")


def _droplet_snapshots(world: World) -> list[dict[str, Any]]:
    return [s for s in world.snapshots.values() if s["resource_type"] == "droplet"]


def _find_image(world: World, key: str) -> dict[str, Any]:
    """A distribution by id or slug, or a droplet snapshot by id, as an image; 404 else."""
    for image in catalog.distribution_images():
        if key in (str(image["id"]), image["slug"]):
            return image
    snapshot = world.snapshots.get(key)
    if snapshot is None or snapshot["resource_type"] != "droplet":
        raise not_found()
    return snapshot_image(snapshot)


def _own_snapshot(world: World, image_id: int) -> dict[str, Any]:
    """The droplet snapshot an image id names: 403 for a distribution, 404 for nothing."""
    if any(image["id"] == image_id for image in catalog.distribution_images()):
        raise _forbidden()
    snapshot = world.snapshots.get(str(image_id))
    if snapshot is None or snapshot["resource_type"] != "droplet":
        raise not_found()
    return snapshot


async def delete_snapshot(world: World, snapshot: dict[str, Any]) -> None:
    """Forget a droplet or volume snapshot; a droplet snapshot's disk copy goes too."""
    del world.snapshots[snapshot["id"]]
    if snapshot["resource_type"] != "droplet":
        return
    snapshot_id = int(snapshot["id"])
    droplet = world.droplets.get(int(snapshot["resource_id"]))
    if droplet is not None and snapshot_id in droplet["snapshot_ids"]:
        droplet["snapshot_ids"].remove(snapshot_id)
    await world.machines.delete_snapshot(snapshot_id)


# Images -------------------------------------------------------------------------------------


@routes.get("/v2/images")
async def list_images(request: web.Request) -> web.Response:
    world = world_of(request)
    query = request.query
    distributions = catalog.distribution_images()
    snapshots = [snapshot_image(s) for s in _droplet_snapshots(world)]
    if query.get("type") == "application":
        found: list[dict[str, Any]] = []  # the stand-in has no 1-Click applications
    elif query.get("type") == "distribution":
        found = distributions
    elif query.get("private") == "true":
        found = snapshots
    else:
        found = distributions + snapshots
    if "tag_name" in query:
        found = [i for i in found if query["tag_name"] in (i["tags"] or [])]
    return reply(page(request, "images", found))


@routes.post("/v2/images")
async def create_custom(request: web.Request) -> web.Response:
    raise unprocessable("Custom images are not supported by the stand-in.")


@routes.get("/v2/images/{image_id}")
async def get_image(request: web.Request) -> web.Response:
    world = world_of(request)
    return reply({"image": _find_image(world, request.match_info["image_id"])})


@routes.put("/v2/images/{image_id}")
async def update_image(request: web.Request) -> web.Response:
    """A snapshot's name; `description` and `distribution` only change custom images."""
    world = world_of(request)
    snapshot = _own_snapshot(world, int_path(request, "image_id"))
    name = body_of(request).get("name")
    if name is not None:
        if not name.strip():
            raise unprocessable("name must not be empty.")
        snapshot["name"] = name
    return reply({"image": snapshot_image(snapshot)})


@routes.delete("/v2/images/{image_id}")
async def delete_image(request: web.Request) -> web.Response:
    world = world_of(request)
    await delete_snapshot(world, _own_snapshot(world, int_path(request, "image_id")))
    return no_content()


# Image actions ------------------------------------------------------------------------------


@routes.post("/v2/images/{image_id}/actions")
async def act(request: web.Request) -> web.Response:
    world = world_of(request)
    image_id = int_path(request, "image_id")
    snapshot = _own_snapshot(world, image_id)
    body = body_of(request)
    if body["type"] == "convert":
        raise unprocessable("Only backups can be converted to snapshots.")
    region = body.get("region")
    if not region:
        raise unprocessable("transfer needs a region.")
    if region not in catalog.REGIONS:
        raise unprocessable(f"Region {region!r} is not available.")
    if region in snapshot["regions"]:
        raise unprocessable(f"The image is already available in {region}.")
    if world.busy("image", image_id):
        raise unprocessable("Image already has a pending event.")
    delays = world.delays
    seconds = max(delays.snapshot_min, delays.snapshot_per_gb * snapshot["size_gigabytes"])

    async def transfer() -> None:
        if region not in snapshot["regions"]:
            snapshot["regions"] = [*snapshot["regions"], region]

    action = world.start_action("transfer", "image", image_id, region, seconds, transfer)
    return reply({"action": action}, 201)


@routes.get("/v2/images/{image_id}/actions")
async def list_actions(request: web.Request) -> web.Response:
    world = world_of(request)
    image_id = int_path(request, "image_id")
    _find_image(world, str(image_id))
    return reply(page(request, "actions", world.actions_on("image", image_id)))


@routes.get("/v2/images/{image_id}/actions/{action_id}")
async def get_action(request: web.Request) -> web.Response:
    world = world_of(request)
    image_id = int_path(request, "image_id")
    action = world.actions.get(int_path(request, "action_id"))
    if action is None or action["resource_type"] != "image" or action["resource_id"] != image_id:
        raise not_found()
    return reply({"action": action})


# Snapshots ----------------------------------------------------------------------------------


def _find_snapshot(world: World, snapshot_id: str) -> dict[str, Any]:
    return existing(world.snapshots, snapshot_id)


@routes.get("/v2/snapshots")
async def list_snapshots(request: web.Request) -> web.Response:
    world = world_of(request)
    kind = request.query.get("resource_type")
    found = [s for s in world.snapshots.values() if kind is None or s["resource_type"] == kind]
    return reply(page(request, "snapshots", found))


@routes.get("/v2/snapshots/{snapshot_id}")
async def get_snapshot(request: web.Request) -> web.Response:
    world = world_of(request)
    return reply({"snapshot": _find_snapshot(world, request.match_info["snapshot_id"])})


@routes.delete("/v2/snapshots/{snapshot_id}")
async def delete(request: web.Request) -> web.Response:
    world = world_of(request)
    await delete_snapshot(world, _find_snapshot(world, request.match_info["snapshot_id"]))
    return no_content()
