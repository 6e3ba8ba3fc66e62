"""A droplet's documents: the API's, the metadata service's, and its machine's spec; its
addresses; and the lookups its handlers share (by id, by tag, images by slug or id)."""

from __future__ import annotations

from typing import Any

from sim.digitalocean import catalog
from sim.digitalocean.http import existing, unprocessable
from sim.digitalocean.machines import MachineSpec
from sim.digitalocean.world import World

FIRST_HOST, LAST_HOST = 2, 199
NETMASK = "255.255.255.0"


def free_host(world: World) -> int:
    """The lowest host number no droplet uses (public and private addresses share it)."""
    used = world_hosts(world)
    for host in range(FIRST_HOST, LAST_HOST + 1):
        if host not in used:
            return host
    raise unprocessable("No address is left in the stand-in's network (198 droplets).")


def world_hosts(world: World) -> set[int]:
    return {int(address(d, "public").rsplit(".", 1)[1]) for d in world.droplets.values()}


def address(droplet: dict[str, Any], kind: str) -> str:
    """The droplet's `public` or `private` IPv4 address (kept even while `networks` is empty,
    before it is active)."""
    return str(droplet["_addresses"][kind])


def public_view(droplet: dict[str, Any]) -> dict[str, Any]:
    """The droplet as the API shows it (without the stand-in's own `_` fields)."""
    return {k: v for k, v in droplet.items() if not k.startswith("_")}


def networks(world: World, public_ip: str, private_ip: str) -> dict[str, Any]:
    nets = world.machines.networks
    return {
        "v4": [
            {
                "ip_address": public_ip,
                "netmask": NETMASK,
                "gateway": nets.gateway,
                "type": "public",
            },
            {
                "ip_address": private_ip,
                "netmask": NETMASK,
                "gateway": nets.private_gateway,
                "type": "private",
            },
        ],
        "v6": [],
    }


def size_fields(slug: str) -> dict[str, Any]:
    size = catalog.size_document(slug)
    return {
        "memory": size["memory"],
        "vcpus": size["vcpus"],
        "disk": size["disk"],
        "disk_info": size["disk_info"],
        "size": size,
        "size_slug": slug,
    }


def find(world: World, droplet_id: int) -> dict[str, Any]:
    return existing(world.droplets, droplet_id)


def tagged(world: World, tag: str) -> list[dict[str, Any]]:
    return [d for d in world.droplets.values() if tag in d["tags"]]


def image_document(world: World, image: int | str) -> dict[str, Any]:
    """The image a droplet is made or rebuilt from: a distribution's slug or id, or a
    snapshot's id; 422 for anything else."""
    for candidate in catalog.distribution_images():
        if image in (candidate["slug"], candidate["id"]):
            return candidate
    snapshot = world.snapshots.get(str(image))
    if snapshot is not None and snapshot["resource_type"] == "droplet":
        return snapshot_image(snapshot)
    raise unprocessable(f"You specified an invalid image for Droplet creation: {image!r}.")


def snapshot_image(snapshot: dict[str, Any]) -> dict[str, Any]:
    """A droplet snapshot as an image (`/v2/images` shows them with type `snapshot`)."""
    return {
        "id": int(snapshot["id"]),
        "name": snapshot["name"],
        "type": "snapshot",
        "distribution": "Debian",
        "slug": None,
        "public": False,
        "regions": snapshot["regions"],
        "created_at": snapshot["created_at"],
        "min_disk_size": snapshot["min_disk_size"],
        "size_gigabytes": snapshot["size_gigabytes"],
        "description": "",
        "tags": snapshot["tags"] or [],
        "status": "available",
        "error_message": "",
    }


def machine_spec(world: World, droplet: dict[str, Any]) -> MachineSpec:
    facts = world.facts[droplet["id"]]
    return MachineSpec(
        id=droplet["id"],
        name=droplet["name"],
        public_ip=address(droplet, "public"),
        private_ip=address(droplet, "private"),
        ssh_keys=facts.public_keys,
        user_data=facts.user_data,
    )


def metadata_document(world: World, source_ip: str) -> dict[str, Any] | None:
    """`/metadata/v1.json` for the droplet at `source_ip` (public, private or reserved)."""
    for droplet in world.droplets.values():
        reserved = [ip for ip, r in world.reserved_ips.items() if _holder(r) == droplet["id"]]
        mine = (address(droplet, "public"), address(droplet, "private"), *reserved)
        if source_ip in mine:
            return _metadata(world, droplet, reserved[0] if reserved else None)
    return None


def _holder(reserved_ip: dict[str, Any]) -> int | None:
    droplet = reserved_ip.get("droplet")
    return int(droplet["id"]) if isinstance(droplet, dict) else None


def _metadata(world: World, droplet: dict[str, Any], reserved: str | None) -> dict[str, Any]:
    facts = world.facts[droplet["id"]]
    nets = world.machines.networks

    def interface(kind: str, gateway: str, number: int) -> dict[str, Any]:
        ip = address(droplet, kind)
        return {
            "ipv4": {"ip_address": ip, "netmask": NETMASK, "gateway": gateway},
            "mac": f"02:00:{number:02x}:{droplet['id'] % 256:02x}:"
            f"{(droplet['id'] >> 8) % 256:02x}:{int(ip.rsplit('.', 1)[1]):02x}",
            "type": kind,
        }

    return {
        "droplet_id": droplet["id"],
        "hostname": droplet["name"],
        "user_data": facts.user_data or "",
        "vendor_data": "",
        "public_keys": list(facts.public_keys),
        "region": droplet["region"]["slug"],
        "interfaces": {
            "public": [interface("public", nets.gateway, 0)],
            "private": [interface("private", nets.private_gateway, 1)],
        },
        "floating_ip": {"ipv4": {"active": False}},
        "reserved_ip": {
            "ipv4": {"active": True, "ip_address": reserved} if reserved else {"active": False}
        },
        "tags": list(droplet["tags"]),
        "features": {"dhcp_enabled": False},
    }
