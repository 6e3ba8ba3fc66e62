"""How `meshctl` reaches a mesh whose NATS is not on the internet (DigitalOcean): an SSH
tunnel (asyncssh) to one droplet, from the administrator's address the firewall lets in,
with a local port forwarded to each NATS server the context knows, on their private
addresses. The context's `tunnel` says where: `{"host", "user", "key_file"}`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from meshd.agent.store import Unreachable

if TYPE_CHECKING:
    import asyncssh

CONNECT_TIMEOUT_S = 10.0


class Tunnel:
    """One SSH connection and its forwarded ports; `urls` are the local ends."""

    def __init__(self, connection: asyncssh.SSHClientConnection, urls: list[str]) -> None:
        self.connection = connection
        self.urls = urls

    async def close(self) -> None:
        self.connection.close()
        await self.connection.wait_closed()


async def open_tunnel(settings: dict[str, Any], servers: Sequence[str]) -> Tunnel:
    """Forward a local port to each of `servers` (nats://address:port) through the host in
    `settings`; Unreachable says why when SSH fails."""
    import asyncssh

    host = str(settings["host"])
    key_file = str(settings["key_file"])  # absolute: `up` wrote it so
    try:
        connection = await asyncssh.connect(
            host,
            int(settings.get("port", 22)),
            username=str(settings.get("user", "root")),
            client_keys=[str(key_file)],
            known_hosts=None,  # the droplet's key is not known ahead (see bootstrap.py)
            connect_timeout=CONNECT_TIMEOUT_S,
        )
    except (OSError, asyncssh.Error, TimeoutError) as err:
        raise Unreachable(
            f"cannot open the SSH tunnel to {host} with {key_file}: {err or type(err).__name__}"
            " (is this address an administrator's? `meshctl firewall admin list`)"
        ) from err
    urls = []
    try:
        for server in servers:
            where = urlsplit(server)
            listener = await connection.forward_local_port(
                "127.0.0.1", 0, where.hostname or "", where.port or 4222
            )
            urls.append(f"nats://127.0.0.1:{listener.get_port()}")
    except (OSError, asyncssh.Error) as err:
        connection.close()
        raise Unreachable(f"cannot forward NATS through {host}: {err}") from err
    return Tunnel(connection, urls)
