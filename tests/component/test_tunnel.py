"""The operator's SSH tunnel (meshd/cli/tunnel.py) against real SSH servers (asyncssh) on
two loopback addresses: it forwards to a server behind them, and when the droplet at its far
end goes away it opens again through the other one on the same local port."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
import pytest
import pytest_asyncio

from meshd.agent.store import Unreachable
from meshd.cli.tunnel import open_tunnel
from tests.support.waiting import until

pytestmark = [pytest.mark.component, pytest.mark.asyncio]


class Forwarding(asyncssh.SSHServer):
    def __init__(self, droplet: Droplet) -> None:
        self.droplet = droplet

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.droplet.connections.append(conn)

    def connection_requested(self, *_: object) -> bool:
        return True  # standard forwarding, as sshd's AllowTcpForwarding


@dataclass
class Droplet:
    host: str
    server: asyncssh.SSHAcceptor | None = None
    connections: list[asyncssh.SSHServerConnection] = field(default_factory=list)

    def die(self) -> None:
        assert self.server is not None
        self.server.close()
        for connection in self.connections:
            connection.abort()


@dataclass
class Lab:
    key_file: Path
    port: int
    nats: str
    a: Droplet
    b: Droplet


@pytest_asyncio.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    client = asyncssh.generate_private_key("ssh-ed25519")
    key_file = tmp_path / "infrastructure_key"
    key_file.write_bytes(client.export_private_key())
    key_file.chmod(0o600)
    authorized = asyncssh.import_authorized_keys(client.export_public_key().decode())
    host_key = asyncssh.generate_private_key("ssh-ed25519")

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"INFO " + await reader.readline())
        await writer.drain()
        writer.close()

    behind = await asyncio.start_server(answer, "127.0.0.1", 0)
    with socket.socket() as probe:
        probe.bind(("127.0.0.2", 0))
        port = probe.getsockname()[1]
    a, b = Droplet("127.0.0.2"), Droplet("127.0.0.3")
    for droplet in (a, b):
        droplet.server = await asyncssh.create_server(
            lambda d=droplet: Forwarding(d), droplet.host, port,
            server_host_keys=[host_key], authorized_client_keys=authorized,
        )  # fmt: skip
    nats = f"nats://127.0.0.1:{behind.sockets[0].getsockname()[1]}"
    try:
        yield Lab(key_file, port, nats, a, b)
    finally:
        for droplet in (a, b):
            if droplet.server is not None:
                droplet.server.close()
        behind.close()


async def ask(url: str) -> bytes:
    port = int(url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"hello\n")
    await writer.drain()
    said = await reader.read()
    writer.close()
    return said


async def test_the_tunnel_opens_again_through_another_droplet_on_the_same_port(lab: Lab) -> None:
    settings = {"host": lab.a.host, "port": lab.port, "user": "root",
                "key_file": str(lab.key_file)}  # fmt: skip

    async def hosts() -> list[str]:
        return [lab.a.host, lab.b.host]

    tunnel = await open_tunnel(settings, [lab.nats], hosts)
    try:
        (url,) = tunnel.urls
        assert await ask(url) == b"INFO hello\n"

        lab.a.die()

        async def through_b() -> bool:
            try:
                return tunnel.host == lab.b.host and await ask(url) == b"INFO hello\n"
            except OSError:
                return False

        await until(through_b, "the tunnel through the other droplet", timeout=30)
        assert tunnel.urls == [url]  # the NATS client's server list still holds
    finally:
        await tunnel.close()


async def test_a_refused_tunnel_says_where_and_why(lab: Lab, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    stranger.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
    stranger.chmod(0o600)
    settings = {"host": lab.a.host, "port": lab.port, "key_file": str(stranger)}

    async def no_others() -> list[str]:
        return []

    with pytest.raises(Unreachable) as refused:
        await open_tunnel(settings, [lab.nats], no_others)

    assert f"cannot open the SSH tunnel to {lab.a.host}" in str(refused.value)
    assert "meshctl firewall admin list" in str(refused.value)
