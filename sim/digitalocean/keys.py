"""The account, its SSH keys, its actions, and the catalog's regions and sizes."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from aiohttp import web

from sim.digitalocean import catalog
from sim.digitalocean.http import (
    body_of,
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
KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
             "ecdsa-sha2-nistp521")  # fmt: skip


@routes.get("/v2/account")
async def account(request: web.Request) -> web.Response:
    world = world_of(request)
    return reply(
        {
            "account": {
                "droplet_limit": world.knobs.droplet_limit,
                "floating_ip_limit": 3,
                "email": "operator@example.com",
                "name": "meshd stand-in",
                "uuid": world.account_uuid,
                "email_verified": True,
                "status": "active",
                "status_message": "",
            }
        }
    )


def fingerprint(public_key: str) -> str:
    """The MD5 fingerprint DigitalOcean shows: 16 hex pairs of the key's decoded blob."""
    blob = base64.b64decode(public_key.split()[1])
    digest = hashlib.md5(blob, usedforsecurity=False).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, 32, 2))


def _find_key(world: World, identifier: str) -> dict[str, Any]:
    for key in world.ssh_keys.values():
        if identifier in (str(key["id"]), key["fingerprint"]):
            return key
    raise not_found()


def public_keys(world: World, identifiers: list[int | str]) -> tuple[str, ...]:
    """The public keys named by id or fingerprint at droplet create; 422 for an unknown one."""
    keys = []
    for identifier in identifiers:
        try:
            keys.append(_find_key(world, str(identifier))["public_key"])
        except Exception:
            raise unprocessable(f"SSH key {identifier!r} is not in this account.") from None
    return tuple(keys)


@routes.get("/v2/account/keys")
async def list_keys(request: web.Request) -> web.Response:
    return reply(page(request, "ssh_keys", list(world_of(request).ssh_keys.values())))


@routes.post("/v2/account/keys")
async def create_key(request: web.Request) -> web.Response:
    world = world_of(request)
    body = body_of(request)
    text = body["public_key"].strip()
    parts = text.split()
    if len(parts) < 2 or parts[0] not in KEY_TYPES:
        raise unprocessable("Key invalid type, we support 'ssh-rsa', 'ssh-ed25519' and ECDSA.")
    try:
        print_ = fingerprint(text)
    except ValueError:
        raise unprocessable("Key invalid, the key data is not base64.") from None
    if any(k["fingerprint"] == print_ for k in world.ssh_keys.values()):
        raise unprocessable("SSH Key is already in use on your account")
    key = {"id": world.next_id("ssh_key"), "fingerprint": print_, "public_key": text,
           "name": body["name"]}  # fmt: skip
    world.ssh_keys[key["id"]] = key
    return reply({"ssh_key": key}, 201)


@routes.get("/v2/account/keys/{ssh_key_identifier}")
async def get_key(request: web.Request) -> web.Response:
    key = _find_key(world_of(request), request.match_info["ssh_key_identifier"])
    return reply({"ssh_key": key})


@routes.put("/v2/account/keys/{ssh_key_identifier}")
async def rename_key(request: web.Request) -> web.Response:
    key = _find_key(world_of(request), request.match_info["ssh_key_identifier"])
    if "name" in body_of(request):
        key["name"] = body_of(request)["name"]
    return reply({"ssh_key": key})


@routes.delete("/v2/account/keys/{ssh_key_identifier}")
async def delete_key(request: web.Request) -> web.Response:
    world = world_of(request)
    key = _find_key(world, request.match_info["ssh_key_identifier"])
    del world.ssh_keys[key["id"]]
    return no_content()


@routes.get("/v2/actions")
async def list_actions(request: web.Request) -> web.Response:
    return reply(page(request, "actions", list(world_of(request).actions.values())))


@routes.get("/v2/actions/{action_id}")
async def get_action(request: web.Request) -> web.Response:
    action = world_of(request).actions.get(int_path(request, "action_id"))
    if action is None:
        raise not_found()
    return reply({"action": action})


@routes.get("/v2/regions")
async def list_regions(request: web.Request) -> web.Response:
    return reply(page(request, "regions", catalog.regions()))


@routes.get("/v2/sizes")
async def list_sizes(request: web.Request) -> web.Response:
    return reply(page(request, "sizes", catalog.sizes()))
