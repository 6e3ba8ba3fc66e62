"""DigitalOcean's droplet documents as meshd's `DropletRecord`s, and the create that never
makes two droplets: a create whose answer was lost is looked up by name and the mesh's tag
(lists lag: for a while) before it is sent again."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from plugins.providers import DropletNotFound, DropletRecord, DropletStatus, ProviderError
from plugins.providers.digitalocean.actions import Pace, settle
from plugins.providers.digitalocean.api import Api, Uncertain

STATUSES = {"new": DropletStatus.NEW, "active": DropletStatus.ACTIVE, "off": DropletStatus.OFF,
            "archive": DropletStatus.OFF}  # fmt: skip
LOOKUPS = 10  # lists after a lost create, `pace.poll_s` apart


def record(droplet: dict[str, Any]) -> DropletRecord:
    """The mesh reaches a droplet on its private (VPC) address; the public one until it has
    one; "" while it is new."""
    v4 = droplet.get("networks", {}).get("v4") or []
    by_kind = {n.get("type"): n.get("ip_address") for n in v4}
    created = droplet.get("created_at") or ""
    return DropletRecord(
        id=str(droplet["id"]),
        name=str(droplet["name"]),
        size=str(droplet.get("size_slug") or ""),
        address=str(by_kind.get("private") or by_kind.get("public") or ""),
        status=STATUSES.get(str(droplet.get("status")), DropletStatus.NEW),
        tags=tuple(droplet.get("tags") or ()),
        created_at=datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
        if created
        else 0.0,
        public_address=str(by_kind.get("public") or ""),
    )


async def listed(api: Api, what: str, *, tag: str | None = None, name: str | None = None
                 ) -> list[dict[str, Any]]:  # fmt: skip
    """Every droplet (of `tag`, called `name`)."""
    filters = {k: v for k, v in (("tag_name", tag), ("name", name)) if v is not None}
    return await api.every(what, api.do.droplets.list, "droplets", **filters)


async def fetch(api: Api, droplet_id: int, what: str) -> dict[str, Any]:
    answer = await api.read(what, lambda **kw: api.do.droplets.get(droplet_id, **kw))
    if "droplet" not in answer:
        raise DropletNotFound(what, str(droplet_id))
    droplet: dict[str, Any] = answer["droplet"]
    return droplet


async def create_once(
    api: Api, body: dict[str, Any], mesh_tag: str, pace: Pace
) -> tuple[dict[str, Any], int | None]:
    """The droplet created from `body` and its create action's id (None when a lost answer
    was resolved by finding the droplet: its action is then not waited for)."""
    what = f"create droplet {body['name']}"
    for _ in range(3):
        try:
            answer = await api.change(what, lambda **kw: api.do.droplets.create(body, **kw))
        except Uncertain:
            found = await _look_for(api, body["name"], mesh_tag, pace)
            if found is not None:
                return found, None
            continue  # not made: the create may be sent again
        actions = (answer.get("links") or {}).get("actions") or [{}]
        return answer["droplet"], actions[0].get("id")
    raise ProviderError(what, "three creates had no answer and made no droplet")


async def _look_for(api: Api, name: str, tag: str, pace: Pace) -> dict[str, Any] | None:
    for attempt in range(LOOKUPS):
        for droplet in await listed(api, f"find droplet {name}", tag=tag, name=name):
            return droplet
        if attempt < LOOKUPS - 1:
            await pace.sleep(pace.poll_s)
    return None


async def wait_active(
    api: Api, droplet: dict[str, Any], action_id: int | None, pace: Pace
) -> dict[str, Any]:
    """The droplet once it is active (its create action settled), addresses included; a
    GET that 404s just after the create is asked again."""
    what = f"create droplet {droplet['name']}"
    if action_id is not None:
        await settle(api, action_id, what, pace)
    for _ in range(LOOKUPS):
        try:
            current = await fetch(api, int(droplet["id"]), what)
        except DropletNotFound:
            await pace.sleep(pace.poll_s)
            continue
        if current.get("status") == "active":
            return current
        await pace.sleep(pace.poll_s)
    raise ProviderError(what, f"droplet {droplet['id']} did not become active")


def create_body(
    name: str, size: str, tags: Sequence[str], user_data: str, settings: dict[str, Any]
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": name,
        "region": settings["region"],
        "size": size,
        "image": settings["image"],
        "tags": list(dict.fromkeys(tags)),
        "ssh_keys": list(settings.get("ssh_keys") or []),
        "monitoring": False,
    }
    if user_data:
        body["user_data"] = user_data
    if settings.get("vpc_uuid"):
        body["vpc_uuid"] = settings["vpc_uuid"]
    return body
