"""How `meshctl` reaches a mesh whose NATS is not on the internet (DigitalOcean): an SSH
tunnel (asyncssh) to one droplet, from the administrator's address the firewall lets in,
with a local port forwarded to each NATS server the context knows, on their private
addresses. The context's `tunnel` says where: `{"host", "user", "key_file"}`.

The droplet at the far end may die or be resized while a command runs (`publish --wait`):
the tunnel then opens again through another droplet of the mesh (the provider lists them)
on the same local ports, and the NATS client reconnects as after any server's death.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from meshd.agent.store import Unreachable

if TYPE_CHECKING:
    import asyncssh

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 10.0
REOPEN_S, REOPEN_MAX_S = 1.0, 30.0  # between rounds of attempts: each lists the droplets

Hosts = Callable[[], Awaitable[list[str]]]  # the mesh's droplets' public addresses, now


class Tunnel:
    """One SSH connection at a time and its forwarded ports; `urls` are the local ends,
    which stay the same when the connection is opened again through another droplet."""

    def __init__(self, settings: dict[str, Any], servers: Sequence[str], hosts: Hosts) -> None:
        self.settings = settings
        self.targets = [(urlsplit(s).hostname or "", urlsplit(s).port or 4222) for s in servers]
        self.hosts = hosts
        self.ports: list[int] = [0] * len(self.targets)
        self.connection: asyncssh.SSHClientConnection | None = None
        self.host = str(settings["host"])
        self._keeper: asyncio.Task[None] | None = None

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{port}" for port in self.ports]

    async def open(self) -> None:
        """Through the context's host, else any droplet of the mesh; Unreachable says why."""
        try:
            await self._open(self.host)
        except Unreachable as first:
            for host in await self._other_hosts():
                with contextlib.suppress(Unreachable):
                    await self._open(host)
                    break
            else:
                raise first from None
        self._keeper = asyncio.create_task(self._keep_open(), name="ssh-tunnel")

    async def close(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        if self.connection is not None:
            self.connection.close()
            await self.connection.wait_closed()

    async def _keep_open(self) -> None:
        while True:
            assert self.connection is not None
            await self.connection.wait_closed()
            log.info("SSH tunnel closed; opening it again. host=%s", self.host)
            wait = REOPEN_S
            while not await self._open_any():
                await asyncio.sleep(wait)
                wait = min(wait * 2, REOPEN_MAX_S)  # the API's budget is the mesh's too

    async def _open_any(self) -> bool:
        for host in [self.host, *await self._other_hosts()]:
            with contextlib.suppress(Unreachable):
                await self._open(host)
                return True
        return False

    async def _other_hosts(self) -> list[str]:
        try:
            return [h for h in await self.hosts() if h != self.host]
        except Exception as err:  # noqa: BLE001 - the provider's failure: no other host known
            log.info("No other droplets to tunnel through. error=%s", err)
            return []

    async def _open(self, host: str) -> None:
        import asyncssh

        key_file = str(self.settings["key_file"])  # absolute: `up` wrote it so
        try:
            connection = await asyncssh.connect(
                host,
                int(self.settings.get("port", 22)),
                username=str(self.settings.get("user", "root")),
                client_keys=[key_file],
                known_hosts=None,  # the droplet's key is not known ahead (see bootstrap.py)
                connect_timeout=CONNECT_TIMEOUT_S,
                keepalive_interval=5,
                keepalive_count_max=3,
            )
        except (OSError, asyncssh.Error, TimeoutError) as err:
            raise Unreachable(
                f"cannot open the SSH tunnel to {host} with {key_file}: "
                f"{err or type(err).__name__} (is this address an administrator's? "
                "`meshctl firewall admin list`)"
            ) from err
        try:
            for index, (address, port) in enumerate(self.targets):
                listener = await connection.forward_local_port(
                    "127.0.0.1", self.ports[index], address, port
                )
                self.ports[index] = listener.get_port()
        except (OSError, asyncssh.Error) as err:
            connection.close()
            raise Unreachable(f"cannot forward NATS through {host}: {err}") from err
        self.connection, self.host = connection, host


async def open_tunnel(settings: dict[str, Any], servers: Sequence[str], hosts: Hosts) -> Tunnel:
    tunnel = Tunnel(settings, servers, hosts)
    await tunnel.open()
    return tunnel
