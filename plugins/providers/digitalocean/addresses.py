"""The mesh's entry address: a DigitalOcean reserved IP, made on first use in the mesh's
region (or the one named in the settings, `reserved_ip`) and moved by assign actions. A
mixin over the provider's `Api` and `Pace`."""

from __future__ import annotations

import logging
from typing import Any

from plugins.providers import Fence, ProviderError
from plugins.providers.digitalocean.actions import Pace, start_and_settle
from plugins.providers.digitalocean.api import Api
from plugins.providers.digitalocean.fencing import Fenced, address_resource


class DigitalOceanAddresses(Fenced):
    _api: Api
    _pace: Pace
    _log: logging.Logger
    _settings: dict[str, Any]

    async def reserve_address(self) -> str:
        known = self._settings.get("reserved_ip")
        if known:
            answer = await self._api.read(
                "find the reserved IP", lambda **kw: self._api.do.reserved_ips.get(known, **kw)
            )
            if "reserved_ip" not in answer:
                raise ProviderError("find the reserved IP", f"{known} is not in the account")
            return str(known)
        body = {"region": self._settings["region"]}
        answer = await self._api.change(
            "reserve an IP", lambda **kw: self._api.do.reserved_ips.create(body, **kw)
        )
        address = str(answer["reserved_ip"]["ip"])
        self._settings["reserved_ip"] = address
        self._log.info("Address reserved. ip=%s", address)
        return address

    async def assign_reserved_address(
        self, address: str, droplet_id: str, *, fence: Fence | None
    ) -> None:
        what = f"assign {address} to droplet {droplet_id}"
        await self._admit(address_resource(address), fence, what)
        answer = await self._api.read(
            what, lambda **kw: self._api.do.reserved_ips.get(address, **kw)
        )
        if "reserved_ip" not in answer:
            raise ProviderError(what, f"{address} is not a reserved IP of the account")
        holder = answer["reserved_ip"].get("droplet") or {}
        if str(holder.get("id")) == droplet_id:
            return
        body = {"type": "assign", "droplet_id": int(droplet_id)}
        await start_and_settle(
            self._api,
            lambda **kw: self._api.do.reserved_ips_actions.post(address, body, **kw),
            what,
            self._pace,
        )
        self._log.info("Address assigned. ip=%s droplet=%s fence=%s", address, droplet_id, fence)

    async def reserved_address_of(self, droplet_id: str) -> str | None:
        what = f"find the reserved IP of droplet {droplet_id}"
        for found in await self._api.every(what, self._api.do.reserved_ips.list, "reserved_ips"):
            if str((found.get("droplet") or {}).get("id")) == droplet_id:
                return str(found["ip"])
        return None

    async def release_reserved_address(self, address: str) -> bool:
        what = f"release the reserved IP {address}"
        answer = await self._api.read(
            what, lambda **kw: self._api.do.reserved_ips.get(address, **kw)
        )
        if "reserved_ip" not in answer:
            return False
        await self._api.change(what, lambda **kw: self._api.do.reserved_ips.delete(address, **kw))
        self._log.info("Address released. ip=%s", address)
        return True
