"""Cloud firewalls: create, list, get, replace, delete; droplets, tags and rules added and
removed; the firewalls of one droplet. After every change the policies of all droplets are
worked out again (`policies`: the union of the rules of the firewalls that apply to a droplet,
by its id or one of its tags, with sources and destinations resolved to addresses) and handed
to the machines (`enforce`).

Limits as DigitalOcean's: at most 10 droplets (by id), 5 tags and 50 rules a firewall. Tags
must exist before a firewall names them; droplets named must exist.
"""

from __future__ import annotations

import ipaddress
import uuid
from typing import Any

from aiohttp import web

from sim.digitalocean.droplet_docs import address, find
from sim.digitalocean.http import (
    body_of,
    existing,
    int_path,
    no_content,
    page,
    reply,
    unprocessable,
    world_of,
)
from sim.digitalocean.machines import FirewallPolicy, FirewallRule
from sim.digitalocean.world import World

routes = web.RouteTableDef()
MAX_DROPLETS = 10
MAX_TAGS = 5
MAX_RULES = 50
ENDS = {"inbound_rules": "sources", "outbound_rules": "destinations"}
END_KEYS = ("addresses", "droplet_ids", "load_balancer_uids", "kubernetes_ids", "tags")
ALL_PORTS = ("0", "all")


# The policies -------------------------------------------------------------------------------


def policies(world: World) -> dict[int, FirewallPolicy]:
    """Every droplet that at least one firewall applies to, with its policy."""
    found: dict[int, FirewallPolicy] = {}
    for droplet in world.droplets.values():
        applying = [f for f in world.firewalls.values() if _applies(f, droplet)]
        if not applying:
            continue
        found[droplet["id"]] = FirewallPolicy(
            inbound=tuple(
                _resolve(world, rule, "sources")
                for firewall in applying
                for rule in firewall["inbound_rules"]
            ),
            outbound=tuple(
                _resolve(world, rule, "destinations")
                for firewall in applying
                for rule in firewall["outbound_rules"]
            ),
        )
    return found


async def enforce(world: World) -> None:
    """Hand every droplet's policy to the machines (droplets left out have no firewall)."""
    await world.machines.apply_firewalls(policies(world))


def on_droplet_gone_firewalls(world: World, droplet_id: int) -> None:
    """A destroyed droplet leaves every firewall, and every rule that named it."""
    for firewall in world.firewalls.values():
        if droplet_id in firewall["droplet_ids"]:
            firewall["droplet_ids"].remove(droplet_id)
        for key, side in ENDS.items():
            for rule in firewall[key]:
                named = rule[side].get("droplet_ids")
                if named and droplet_id in named:
                    named.remove(droplet_id)


def _applies(firewall: dict[str, Any], droplet: dict[str, Any]) -> bool:
    return droplet["id"] in firewall["droplet_ids"] or any(
        tag in droplet["tags"] for tag in firewall["tags"]
    )


def _resolve(world: World, rule: dict[str, Any], side: str) -> FirewallRule:
    ends = rule[side]
    addresses: list[str] = list(ends.get("addresses") or [])
    named = [world.droplets[i] for i in ends.get("droplet_ids") or [] if i in world.droplets]
    for tag in ends.get("tags") or []:
        named += [d for d in world.droplets.values() if tag in d["tags"]]
    for droplet in named:
        addresses += [address(droplet, "public"), address(droplet, "private")]
    protocol = rule["protocol"]
    ports = "" if protocol == "icmp" else ("all" if rule["ports"] in ALL_PORTS else rule["ports"])
    return FirewallRule(protocol, ports, tuple(dict.fromkeys(addresses)))


# Checks ---------------------------------------------------------------------------------------


def _droplet_ids(world: World, ids: list[int] | None) -> list[int]:
    found = list(dict.fromkeys(ids or []))
    missing = [i for i in found if i not in world.droplets]
    if missing:
        raise unprocessable(f"Droplet(s) {', '.join(map(str, missing))} do not exist.")
    return found


def _tags(world: World, tags: list[str] | None) -> list[str]:
    found = list(dict.fromkeys(tags or []))
    missing = [t for t in found if t not in world.tags]
    if missing:
        raise unprocessable(f"Tag(s) {', '.join(missing)} do not exist: create them first.")
    return found


def _check_ports(protocol: str, ports: str) -> None:
    low, dash, high = ports.partition("-")
    numbers = [low, high] if dash else [low]
    valid = all(n.isdigit() and 1 <= int(n) <= 65535 for n in numbers) and (
        not dash or int(low) <= int(high)
    )
    if not (valid or ports in ALL_PORTS):
        raise unprocessable(
            f"Invalid ports {ports!r} for a {protocol} rule: a port (22), a range "
            "(8000-9000), or 0 / all."
        )


def _rule(world: World, rule: dict[str, Any], side: str) -> dict[str, Any]:
    """The rule as it is kept and shown; 422 for what DigitalOcean refuses."""
    protocol = rule["protocol"]
    ports = "0" if protocol == "icmp" else str(rule.get("ports") or "").strip()
    if protocol != "icmp":
        _check_ports(protocol, ports)
    given = rule.get(side) or {}
    ends = {k: list(given[k]) for k in END_KEYS if given.get(k)}
    if not ends:
        raise unprocessable(f"A rule needs at least one of its {side}.")
    for item in ends.get("addresses", []):
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise unprocessable(f"invalid address {item!r} in a rule's {side}") from None
    if "droplet_ids" in ends:
        ends["droplet_ids"] = _droplet_ids(world, ends["droplet_ids"])
    if "tags" in ends:
        ends["tags"] = _tags(world, ends["tags"])
    return {"protocol": protocol, "ports": ports, side: ends}


def _rules(world: World, body: dict[str, Any], key: str) -> list[dict[str, Any]]:
    return [_rule(world, rule, ENDS[key]) for rule in body.get(key) or []]


def _check_limits(firewall: dict[str, Any]) -> None:
    if len(firewall["droplet_ids"]) > MAX_DROPLETS:
        raise unprocessable(
            f"A firewall can be applied to at most {MAX_DROPLETS} Droplets by id: "
            "use tags for more."
        )
    if len(firewall["tags"]) > MAX_TAGS:
        raise unprocessable(f"A firewall can be applied to at most {MAX_TAGS} tags.")
    if len(firewall["inbound_rules"]) + len(firewall["outbound_rules"]) > MAX_RULES:
        raise unprocessable(f"A firewall can have at most {MAX_RULES} rules.")


def _contents(world: World, body: dict[str, Any]) -> dict[str, Any]:
    """What a create or a replace sets: everything not given is empty."""
    contents = {
        "name": body["name"],
        "inbound_rules": _rules(world, body, "inbound_rules"),
        "outbound_rules": _rules(world, body, "outbound_rules"),
        "droplet_ids": _droplet_ids(world, body.get("droplet_ids")),
        "tags": _tags(world, body.get("tags")),
    }
    if not contents["inbound_rules"] and not contents["outbound_rules"]:
        raise unprocessable("A firewall needs at least one inbound or outbound rule.")
    _check_limits(contents)
    return contents


def _find(world: World, firewall_id: str) -> dict[str, Any]:
    return existing(world.firewalls, firewall_id)


# Handlers -----------------------------------------------------------------------------------


@routes.get("/v2/firewalls")
async def list_firewalls(request: web.Request) -> web.Response:
    world = world_of(request)
    return reply(page(request, "firewalls", list(world.firewalls.values())))


@routes.post("/v2/firewalls")
async def create(request: web.Request) -> web.Response:
    world = world_of(request)
    contents = _contents(world, body_of(request))
    firewall = {
        "id": str(uuid.uuid4()),
        "status": "succeeded",
        "created_at": world.clock.stamp(),
        "pending_changes": [],
        **contents,
    }
    world.firewalls[firewall["id"]] = firewall
    await enforce(world)
    return reply({"firewall": firewall}, 202)


@routes.get("/v2/firewalls/{firewall_id}")
async def get_firewall(request: web.Request) -> web.Response:
    world = world_of(request)
    return reply({"firewall": _find(world, request.match_info["firewall_id"])})


@routes.put("/v2/firewalls/{firewall_id}")
async def replace(request: web.Request) -> web.Response:
    world = world_of(request)
    firewall = _find(world, request.match_info["firewall_id"])
    firewall.update(_contents(world, body_of(request)))
    await enforce(world)
    return reply({"firewall": firewall})


@routes.delete("/v2/firewalls/{firewall_id}")
async def delete(request: web.Request) -> web.Response:
    world = world_of(request)
    firewall = _find(world, request.match_info["firewall_id"])
    del world.firewalls[firewall["id"]]
    await enforce(world)
    return no_content()


async def _change(request: web.Request, key: str, add: bool) -> web.Response:
    """Add or remove droplet ids or tags; the firewall is unchanged when a check fails."""
    world = world_of(request)
    firewall = _find(world, request.match_info["firewall_id"])
    items: list[Any] = body_of(request)[key] or []
    if add and key == "droplet_ids":
        items = _droplet_ids(world, items)
    elif add and key == "tags":
        items = _tags(world, items)
    current = firewall[key]
    if add:
        changed = [*current, *(i for i in items if i not in current)]
    else:
        changed = [i for i in current if i not in items]
    _check_limits({**firewall, key: changed})
    firewall[key] = changed
    await enforce(world)
    return no_content()


@routes.post("/v2/firewalls/{firewall_id}/droplets")
async def add_droplets(request: web.Request) -> web.Response:
    return await _change(request, "droplet_ids", add=True)


@routes.delete("/v2/firewalls/{firewall_id}/droplets")
async def remove_droplets(request: web.Request) -> web.Response:
    return await _change(request, "droplet_ids", add=False)


@routes.post("/v2/firewalls/{firewall_id}/tags")
async def add_tags(request: web.Request) -> web.Response:
    return await _change(request, "tags", add=True)


@routes.delete("/v2/firewalls/{firewall_id}/tags")
async def remove_tags(request: web.Request) -> web.Response:
    return await _change(request, "tags", add=False)


@routes.post("/v2/firewalls/{firewall_id}/rules")
async def add_rules(request: web.Request) -> web.Response:
    world = world_of(request)
    firewall = _find(world, request.match_info["firewall_id"])
    body = body_of(request)
    changed = {key: firewall[key] + _rules(world, body, key) for key in ENDS}
    _check_limits({**firewall, **changed})
    firewall.update(changed)
    await enforce(world)
    return no_content()


@routes.delete("/v2/firewalls/{firewall_id}/rules")
async def remove_rules(request: web.Request) -> web.Response:
    """Remove the rules equal to those given (protocol, ports and ends); others stay."""
    world = world_of(request)
    firewall = _find(world, request.match_info["firewall_id"])
    body = body_of(request)
    for key, side in ENDS.items():
        gone = [_loose(rule, side) for rule in body.get(key) or []]
        firewall[key] = [r for r in firewall[key] if _loose(r, side) not in gone]
    await enforce(world)
    return no_content()


def _loose(rule: dict[str, Any], side: str) -> tuple[str, str, tuple[tuple[str, Any], ...]]:
    """A rule as it is compared: icmp's ports do not count; ends' order does not count."""
    protocol = rule["protocol"]
    ports = "0" if protocol == "icmp" else str(rule.get("ports") or "").strip()
    given = rule.get(side) or {}
    ends = tuple((k, tuple(sorted(map(str, given[k])))) for k in END_KEYS if given.get(k))
    return protocol, ports, ends


@routes.get("/v2/droplets/{droplet_id}/firewalls")
async def droplet_firewalls(request: web.Request) -> web.Response:
    world = world_of(request)
    droplet = find(world, int_path(request, "droplet_id"))
    found = [f for f in world.firewalls.values() if _applies(f, droplet)]
    return reply(page(request, "firewalls", found))
