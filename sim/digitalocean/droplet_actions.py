"""Droplet actions: power off and on, shutdown, reboot, power cycle, snapshot, rebuild,
resize, rename and the flag-like rest; by droplet, or for every droplet of a tag. One action
at a time per droplet: a second one is refused with "already has a pending event"."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from sim.digitalocean import catalog
from sim.digitalocean.droplet_docs import (
    address,
    find,
    image_document,
    networks,
    size_fields,
    tagged,
)
from sim.digitalocean.http import (
    ApiError,
    body_of,
    int_path,
    not_found,
    page,
    reply,
    unprocessable,
    world_of,
)
from sim.digitalocean.world import Finish, World

routes = web.RouteTableDef()
TAG_ACTIONS = {
    "power_cycle", "power_on", "power_off", "shutdown", "enable_ipv6", "enable_backups",
    "disable_backups", "snapshot",
}  # fmt: skip


@routes.post("/v2/droplets/{droplet_id}/actions")
async def act(request: web.Request) -> web.Response:
    world = world_of(request)
    droplet = find(world, int_path(request, "droplet_id"))
    return reply({"action": start(world, droplet, body_of(request))}, 201)


@routes.post("/v2/droplets/actions")
async def act_on_tag(request: web.Request) -> web.Response:
    world = world_of(request)
    body = body_of(request)
    tag = request.query.get("tag_name")
    if not tag:
        raise ApiError(400, "bad_request", "Acting on droplets by tag needs tag_name.")
    if body["type"] not in TAG_ACTIONS:
        raise unprocessable(f"Action {body['type']!r} cannot be taken by tag.")
    droplets = tagged(world, tag)
    for droplet in droplets:
        _refuse_if_busy(world, droplet)
    return reply({"actions": [start(world, d, body) for d in droplets]}, 201)


@routes.get("/v2/droplets/{droplet_id}/actions")
async def list_actions(request: web.Request) -> web.Response:
    world = world_of(request)
    droplet_id = find(world, int_path(request, "droplet_id"))["id"]
    return reply(page(request, "actions", world.actions_on("droplet", droplet_id)))


@routes.get("/v2/droplets/{droplet_id}/actions/{action_id}")
async def get_action(request: web.Request) -> web.Response:
    world = world_of(request)
    droplet_id = find(world, int_path(request, "droplet_id"))["id"]
    action = world.actions.get(int_path(request, "action_id"))
    if action is None or action["resource_id"] != droplet_id:
        raise not_found()
    return reply({"action": action})


def _refuse_if_busy(world: World, droplet: dict[str, Any]) -> None:
    if world.busy("droplet", droplet["id"]):
        raise unprocessable("Droplet already has a pending event.")


def start(world: World, droplet: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """Check and start one action on one droplet; the action's document."""
    _refuse_if_busy(world, droplet)
    kind = body["type"]
    seconds, finish = _plan(world, droplet, kind, body)
    droplet["locked"] = True

    def after() -> None:
        droplet["locked"] = False

    return world.start_action(
        kind, "droplet", droplet["id"], droplet["region"]["slug"], seconds, finish, after
    )


def _plan(
    world: World, droplet: dict[str, Any], kind: str, body: dict[str, Any]
) -> tuple[float, Finish | None]:
    """How long the action takes and what it does at the end; 422 for what cannot be done."""
    delays = world.delays
    machines = world.machines
    droplet_id = droplet["id"]
    status = droplet["status"]
    if status == "new":
        raise unprocessable("Droplet is still being created.")

    if kind in ("power_off", "shutdown"):

        async def off() -> None:
            await machines.power_off(droplet_id)
            world.later(world.knobs.active_after_off, lambda: _set(droplet, "off"))

        return (delays.power_off if kind == "power_off" else delays.shutdown), off
    if kind == "power_on":
        if status == "active":
            raise unprocessable("Droplet is already powered on.")

        async def on() -> None:
            await machines.power_on(droplet_id)
            _set(droplet, "active")

        return delays.power_on, on
    if kind in ("reboot", "power_cycle"):

        async def cycle() -> None:
            await machines.power_off(droplet_id)
            await machines.power_on(droplet_id)
            _set(droplet, "active")

        return delays.reboot, cycle
    if kind == "snapshot":
        return _snapshot(world, droplet, body.get("name"))
    if kind in ("rebuild", "restore"):
        if "image" not in body:
            raise unprocessable(f"{kind} needs an image.")
        image = image_document(world, body["image"])
        return _rebuild(world, droplet, image)
    if kind == "resize":
        return _resize(world, droplet, body)
    if kind == "rename":
        if not body.get("name"):
            raise unprocessable("rename needs a name.")

        async def rename() -> None:
            droplet["name"] = body["name"]

        return delays.quick, rename
    if kind == "enable_backups":
        return delays.quick, _feature(droplet, "backups", add=True)
    if kind == "disable_backups":
        return delays.quick, _feature(droplet, "backups", add=False)
    if kind == "enable_ipv6":
        return delays.quick, _feature(droplet, "ipv6", add=True)
    return delays.quick, None  # password_reset, change_kernel: nothing to model


def _set(droplet: dict[str, Any], status: str) -> None:
    droplet["status"] = status


def _feature(droplet: dict[str, Any], name: str, add: bool) -> Finish:
    async def change() -> None:
        features = [f for f in droplet["features"] if f != name]
        droplet["features"] = [*features, name] if add else features

    return change


def _snapshot(world: World, droplet: dict[str, Any], name: str | None) -> tuple[float, Finish]:
    facts = world.facts[droplet["id"]]
    seconds = max(world.delays.snapshot_min, world.delays.snapshot_per_gb * facts.used_gb)
    snapshot_id = world.next_id("image")
    started = world.clock.stamp()
    label = name or f"{droplet['name']}-{started}"

    async def take() -> None:
        used = await world.machines.snapshot(droplet["id"], snapshot_id)
        world.snapshots[str(snapshot_id)] = {
            "id": str(snapshot_id),
            "name": label,
            "created_at": started,
            "regions": [droplet["region"]["slug"]],
            "min_disk_size": droplet["disk"],
            "size_gigabytes": round(max(used, 0.01), 2),
            "resource_id": str(droplet["id"]),
            "resource_type": "droplet",
            "tags": [],
        }
        if droplet["id"] in world.droplets:
            droplet["snapshot_ids"].append(snapshot_id)

    return seconds, take


def _rebuild(world: World, droplet: dict[str, Any], image: dict[str, Any]) -> tuple[float, Finish]:
    gigabytes = float(image["size_gigabytes"] or 1.0)
    seconds = world.delays.rebuild + world.delays.rebuild_per_gb * gigabytes
    snapshot_id = image["id"] if image["type"] == "snapshot" else None

    async def rebuild() -> None:
        await world.machines.rebuild(droplet["id"], snapshot_id)
        droplet["image"] = image
        world.facts[droplet["id"]].used_gb = gigabytes
        _set(droplet, "active")
        droplet["networks"] = networks(
            world, address(droplet, "public"), address(droplet, "private")
        )

    return seconds, rebuild


def _resize(world: World, droplet: dict[str, Any], body: dict[str, Any]) -> tuple[float, Finish]:
    slug = body.get("size")
    if not slug:
        raise unprocessable("resize needs a size.")
    if slug not in catalog.size_slugs():
        raise unprocessable(f"Size {slug!r} is not available.")
    if droplet["status"] != "off":
        raise unprocessable("Droplet must be powered off to resize.")
    if catalog.size_document(slug)["disk"] < droplet["disk"]:
        raise unprocessable(f"Size {slug!r} has a smaller disk than the droplet's.")
    used = world.facts[droplet["id"]].used_gb
    seconds = max(world.delays.resize_min, world.delays.resize_per_gb * used)

    async def resize() -> None:
        disk = droplet["disk"]
        droplet.update(size_fields(slug))
        if not body.get("disk"):  # CPU and memory only: the disk stays as it was
            droplet["disk"] = disk

    return seconds, resize
