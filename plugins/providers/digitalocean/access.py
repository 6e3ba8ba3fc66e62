"""Who may reach the mesh's droplets: the SSH keys DigitalOcean puts on them at create, and one
cloud firewall per mesh, attached by the mesh's tag so that new and rebuilt droplets are
covered at once. The firewall lets in SSH from the administrator's addresses only, the web
(80, 443) from anywhere, and everything between droplets of the mesh (its tag); everything
may go out. A mixin over the provider's `Api`; the firewall's contents are a pure function."""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import logging
from collections.abc import Sequence
from typing import Any

from plugins.providers import ProviderError
from plugins.providers.digitalocean.api import Api, Refused, as_json

ANYWHERE = ["0.0.0.0/0", "::/0"]
WEB_PORTS = ("80", "443")


def fingerprint(public_key: str) -> str:
    """DigitalOcean's name for a key: the MD5 of its blob, in colon-separated hex pairs."""
    try:
        blob = base64.b64decode(public_key.split()[1], validate=True)
    except (IndexError, binascii.Error):
        raise ProviderError("add an SSH key", "not an OpenSSH public key line") from None
    digest = hashlib.md5(blob, usedforsecurity=False).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, 32, 2))


def checked_addresses(addresses: Sequence[str], what: str) -> list[str]:
    """The administrator's addresses (a bare address is a /32 or /128), without repeats."""
    found = []
    for address in addresses:
        try:
            found.append(str(ipaddress.ip_network(address.strip(), strict=False)))
        except ValueError:
            raise ProviderError(what, f"{address!r} is not an IP address or network") from None
    return list(dict.fromkeys(found))


def firewall_body(name: str, tag: str, admins: Sequence[str]) -> dict[str, Any]:
    """The whole firewall (DigitalOcean replaces everything on update)."""
    inbound: list[dict[str, Any]] = []
    if admins:
        inbound.append({"protocol": "tcp", "ports": "22", "sources": {"addresses": list(admins)}})
    inbound += [
        {"protocol": "tcp", "ports": port, "sources": {"addresses": ANYWHERE}} for port in WEB_PORTS
    ]
    inbound += [
        {"protocol": "tcp", "ports": "all", "sources": {"tags": [tag]}},
        {"protocol": "udp", "ports": "all", "sources": {"tags": [tag]}},
        {"protocol": "icmp", "ports": "0", "sources": {"tags": [tag]}},
    ]
    outbound = [
        {"protocol": "tcp", "ports": "all", "destinations": {"addresses": ANYWHERE}},
        {"protocol": "udp", "ports": "all", "destinations": {"addresses": ANYWHERE}},
        {"protocol": "icmp", "ports": "0", "destinations": {"addresses": ANYWHERE}},
    ]
    return {"name": name, "tags": [tag], "inbound_rules": inbound, "outbound_rules": outbound}


def admins_of(firewall: dict[str, Any]) -> list[str]:
    for rule in firewall.get("inbound_rules") or []:
        if rule.get("protocol") == "tcp" and str(rule.get("ports")) == "22":
            return list((rule.get("sources") or {}).get("addresses") or [])
    return []


class DigitalOceanAccess:
    _api: Api
    _log: logging.Logger
    _mesh: str

    @property
    def firewall_name(self) -> str:
        return f"meshd-{self._mesh}"

    async def ensure_ssh_key(self, name: str, public_key: str) -> str:
        """The key's fingerprint, uploading it once (found by fingerprint if it is already)."""
        print_ = fingerprint(public_key)
        what = f"add the SSH key {name!r}"
        found = await self._api.read(
            what, lambda **kw: self._api.do.ssh_keys.get(as_json(print_), **kw)
        )
        if "ssh_key" in found:
            return print_
        body = {"name": name, "public_key": public_key.strip()}
        try:
            await self._api.change(what, lambda **kw: self._api.do.ssh_keys.create(body, **kw))
        except Refused as err:
            if "already in use" not in err.message:
                raise
        self._log.info("SSH key added. name=%s fingerprint=%s", name, print_)
        return print_

    async def ensure_firewall(self, tag: str, admins: Sequence[str]) -> str:
        """The mesh's firewall, made or replaced to say exactly this; its id."""
        what = f"set the firewall {self.firewall_name}"
        wanted = checked_addresses(admins, what)
        await self._api.change(  # a firewall may name only tags that exist; made if missing
            what, lambda **kw: self._api.do.tags.create({"name": tag}, **kw)
        )
        body = firewall_body(self.firewall_name, tag, wanted)
        current = await self._firewall(what)
        if current is None:
            answer = await self._api.change(
                what, lambda **kw: self._api.do.firewalls.create(body, **kw)
            )
        else:
            answer = await self._api.change(
                what, lambda **kw: self._api.do.firewalls.update(current["id"], body, **kw)
            )
        made: dict[str, Any] = answer["firewall"]
        self._log.info("Firewall set. name=%s admins=%s", self.firewall_name, wanted)
        return str(made["id"])

    async def firewall_admins(self) -> list[str]:
        current = await self._firewall("list the administrators")
        return admins_of(current) if current is not None else []

    async def change_firewall_admins(
        self, tag: str, add: Sequence[str] = (), remove: Sequence[str] = ()
    ) -> list[str]:
        """Add and remove administrators' addresses; the ones the firewall lets in after."""
        what = "change the administrators"
        gone = set(checked_addresses(remove, what))
        admins = [a for a in await self.firewall_admins() if a not in gone]
        admins = checked_addresses([*admins, *add], what)
        await self.ensure_firewall(tag, admins)
        return admins

    async def remove_firewall(self) -> bool:
        what = f"delete the firewall {self.firewall_name}"
        current = await self._firewall(what)
        if current is None:
            return False
        await self._api.change(
            what, lambda **kw: self._api.do.firewalls.delete(current["id"], **kw)
        )
        self._log.info("Firewall deleted. name=%s", self.firewall_name)
        return True

    async def _firewall(self, what: str) -> dict[str, Any] | None:
        for firewall in await self._api.every(what, self._api.do.firewalls.list, "firewalls"):
            if firewall.get("name") == self.firewall_name:
                return dict(firewall)
        return None
