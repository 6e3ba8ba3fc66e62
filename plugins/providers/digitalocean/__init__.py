"""The `digitalocean` provider: droplets of a DigitalOcean account, through its API v2
(`pydo.aio`), imported only by the roles that call it.

What the API makes hard is handled in one place each: the rate budget and which failures are
sent again (`api`), actions polled to their end and pending events waited out (`actions`), no
droplet made twice and lists that lag (`droplets`). Settings (the provider's config section):
`region` (required), `image` (default `debian-12-x64`), `ssh_keys` (ids or fingerprints),
`vpc_uuid`, `api_url` (default DigitalOcean's; the stand-in's in tests), `poll_s`,
`action_timeout_s`; the token from `token`, else the mesh secret `token_secret` (an agent's:
`digitalocean_token`, opened in memory and read before every request), else the file
`token_file`, else `DIGITALOCEAN_TOKEN`.

Snapshots, rebuilds and volumes are in `storage`, the reserved IP in `addresses`, SSH keys
and the mesh's firewall in `access`.

A leader's fence goes past the mesh's fence book before every call that changes something
(`fencing`); the operator's own calls carry none.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from plugins.providers import (
    DropletNotFound,
    DropletRecord,
    DropletStatus,
    Fence,
    ProviderConfigError,
    ProviderContext,
    ProviderError,
)
from plugins.providers.digitalocean import droplets
from plugins.providers.digitalocean.access import DigitalOceanAccess
from plugins.providers.digitalocean.actions import POLL_S, TIMEOUT_S, Pace, act
from plugins.providers.digitalocean.addresses import DigitalOceanAddresses
from plugins.providers.digitalocean.api import Api, Refused, TokenSource, Uncertain
from plugins.providers.digitalocean.fencing import Fenced
from plugins.providers.digitalocean.storage import DigitalOceanStorage

API_URL = "https://api.digitalocean.com"
IMAGE = "debian-12-x64"


class DigitalOceanProvider(DigitalOceanStorage, DigitalOceanAddresses, DigitalOceanAccess, Fenced):
    """Droplets of one DigitalOcean account; see the module docstring."""

    name = "digitalocean"
    resize_powers_off = True  # DigitalOcean resizes droplets that are off

    def __init__(self, ctx: ProviderContext, api: Api, settings: dict[str, Any], pace: Pace):
        self._mesh = ctx.mesh
        self._log = ctx.logger
        self._api = api
        self._settings = settings
        self._pace = pace
        self._fences = ctx.fences

    @property
    def requests(self) -> int:
        """API requests sent so far (429s included)."""
        return self._api.requests

    async def create(
        self, name: str, size: str, *, tags: Sequence[str], user_data: str, fence: Fence | None
    ) -> DropletRecord:
        what = f"create droplet {name}"
        if await droplets.listed(self._api, what, name=name):
            raise ProviderError(what, f"a droplet called {name!r} exists already")
        mesh_tag = next(iter(tags), f"meshd-{self._mesh}")
        body = droplets.create_body(name, size, tags, user_data, self._settings)
        made, action_id = await droplets.create_once(self._api, body, mesh_tag, self._pace)
        active = await droplets.wait_active(self._api, made, action_id, self._pace)
        found = droplets.record(active)
        self._log.info(
            "Droplet created. id=%s name=%s address=%s fence=%s", found.id, name, found.address,
            fence,
        )  # fmt: skip
        return found

    async def list(self, tag: str | None = None) -> builtins.list[DropletRecord]:
        found = await droplets.listed(self._api, "list droplets", tag=tag)
        return [droplets.record(d) for d in found]

    async def get(self, droplet_id: str) -> DropletRecord:
        return droplets.record(await droplets.fetch(self._api, _id(droplet_id), "get droplet"))

    async def power_off(self, droplet_id: str, *, fence: Fence | None) -> None:
        what = f"power off droplet {droplet_id}"
        await self._admit(droplet_id, fence, what)
        await self._act(droplet_id, {"type": "power_off"}, what)
        await self._until(droplet_id, DropletStatus.OFF, what)  # a done power_off may read active
        self._log.info("Droplet powered off. id=%s fence=%s", droplet_id, fence)

    async def power_on(self, droplet_id: str, *, fence: Fence | None) -> None:
        what = f"power on droplet {droplet_id}"
        await self._admit(droplet_id, fence, what)
        try:
            await self._act(droplet_id, {"type": "power_on"}, what)
        except Refused as err:
            if "already powered on" not in err.message:
                raise
        await self._until(droplet_id, DropletStatus.ACTIVE, what)
        self._log.info("Droplet powered on. id=%s fence=%s", droplet_id, fence)

    async def resize(self, droplet_id: str, size: str, *, fence: Fence | None) -> None:
        """DigitalOcean resizes only a droplet that is off: off, resize (CPU and memory, so
        that it can go back down), on again."""
        what = f"resize droplet {droplet_id} to {size}"
        await self._admit(droplet_id, fence, what)
        await self.power_off(droplet_id, fence=fence)
        await self._act(droplet_id, {"type": "resize", "size": size, "disk": False}, what)
        await self.power_on(droplet_id, fence=fence)
        self._log.info("Droplet resized. id=%s size=%s fence=%s", droplet_id, size, fence)

    async def destroy(self, droplet_id: str, *, fence: Fence | None) -> None:
        what = f"destroy droplet {droplet_id}"
        number = _id(droplet_id)
        await self._admit(droplet_id, fence, what)
        for _ in range(3):
            try:
                answer = await self._api.change(
                    what, lambda **kw: self._api.do.droplets.destroy(number, **kw)
                )
            except Uncertain:
                try:
                    await droplets.fetch(self._api, number, what)
                except DropletNotFound:
                    break  # the lost answer was a done destroy
                continue
            if isinstance(answer, dict) and answer.get("id") == "not_found":
                raise DropletNotFound(what, droplet_id)
            break
        self._log.info("Droplet destroyed. id=%s fence=%s", droplet_id, fence)

    async def close(self) -> None:
        await self._api.close()

    async def _act(self, droplet_id: str, body: dict[str, Any], what: str) -> None:
        try:
            await act(self._api, _id(droplet_id), body, what, self._pace)
        except Refused as err:
            if err.status == 404:
                raise DropletNotFound(what, droplet_id) from None
            raise

    async def _until(self, droplet_id: str, status: DropletStatus, what: str) -> None:
        deadline = self._pace.clock() + self._pace.timeout_s
        while (await self.get(droplet_id)).status != status:
            if self._pace.clock() > deadline:
                raise ProviderError(what, f"droplet {droplet_id} never read {status}")
            await self._pace.sleep(self._pace.poll_s)


def _id(droplet_id: str) -> int:
    if not droplet_id.isdigit():
        raise DropletNotFound("find droplet", droplet_id)
    return int(droplet_id)


def parse_settings(
    config: dict[str, Any], secrets: Callable[[str], bytes | None] | None = None
) -> tuple[str | TokenSource, str, dict[str, Any], Pace]:
    """The token (or where to read it from), the API's URL, the droplet settings and the pace,
    from the config section; ProviderConfigError says what is missing or wrong (never the
    token itself)."""
    if not isinstance(config.get("region"), str) or not config["region"]:
        raise ProviderConfigError("digitalocean", '`region` is required (e.g. "fra1")')
    url = str(config.get("api_url") or API_URL)
    settings, pace = _settings(config)
    name = config.get("token_secret")
    if name and not config.get("token"):
        if secrets is None:
            raise ProviderConfigError("digitalocean", f"`token_secret` {name!r} needs an agent")
        lookup = secrets
        return (lambda: _text(lookup(str(name)))), url, settings, pace
    token = config.get("token")
    if not token and config.get("token_file"):
        path = Path(str(config["token_file"])).expanduser()
        try:
            token = path.read_text().strip()
        except OSError as err:
            raise ProviderConfigError(
                "digitalocean", f"cannot read token_file {path}: {err.strerror}"
            ) from err
    token = token or os.environ.get("DIGITALOCEAN_TOKEN", "")
    if not token:
        raise ProviderConfigError(
            "digitalocean", "no API token: set DIGITALOCEAN_TOKEN or `token_file`"
        )
    return str(token), url, settings, pace


def _text(value: bytes | None) -> str | None:
    try:
        return value.decode().strip() if value else None
    except UnicodeDecodeError:
        return None  # not a token: the request is refused with NO_TOKEN, never shown


def _settings(config: dict[str, Any]) -> tuple[dict[str, Any], Pace]:
    settings = {
        "region": config["region"],
        "image": config.get("image") or IMAGE,
        "ssh_keys": list(config.get("ssh_keys") or []),
        "vpc_uuid": config.get("vpc_uuid"),
        "reserved_ip": config.get("reserved_ip"),
    }
    pace = Pace(
        poll_s=float(config.get("poll_s", POLL_S)),
        timeout_s=float(config.get("action_timeout_s", TIMEOUT_S)),
    )
    return settings, pace


def create(ctx: ProviderContext) -> DigitalOceanProvider:
    token, url, settings, pace = parse_settings(ctx.config, ctx.secrets)
    return DigitalOceanProvider(ctx, Api(token, url), settings, pace)
