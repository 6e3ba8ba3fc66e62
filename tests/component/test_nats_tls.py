"""NATS with TLS from the mesh CA on real nats-servers (2.15), configured as droplets are
(`nats_server_conf` with the certificates a bootstrap writes): three servers route to each
other over TLS and form a JetStream cluster; a client that trusts the mesh CA writes and
reads KV, directly and through a forwarded local port (meshctl's tunnel); a plain client, a
client trusting another CA and one expecting another mesh's name are refused; a server
whose certificate another CA issued does not route, even with the route password."""

from __future__ import annotations

import asyncio
import datetime
import json
import socket
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from meshd.agent.config import (
    CA_CERT_FILE,
    CA_KEY_FILE,
    CLIENT_PORT,
    LEAF_CERT_FILE,
    LEAF_KEY_FILE,
    MONITOR_PORT,
    CoreServer,
    MeshConfig,
    new_passwords,
)
from meshd.agent.store import StoreUnavailable, open_store
from meshd.agent.store.jetstream import NatsStore
from meshd.core.meshca import MeshCA, issue_leaf, make_ca
from meshd.core.trust import ClientTrust
from protocol import subjects
from tests.support.forwarding import pipe
from tests.support.nats import ServerSet, loopback_addresses, server_set
from tests.support.waiting import until

pytestmark = pytest.mark.component
NOW = datetime.datetime.now(datetime.UTC)
MESH = "tls"


def write_certificates(home: Path, ca: MeshCA, server: CoreServer, issuer: MeshCA) -> None:
    """What a bootstrap writes into a droplet's directory: the mesh CA (`ca`) and the
    droplet's leaf, here issued by `issuer` (another CA makes a rogue)."""
    cert, key = issue_leaf(issuer, MESH, server.name, server.address, NOW)
    for name, data in ((CA_CERT_FILE, ca.cert_pem), (CA_KEY_FILE, ca.key_pem),
                       (LEAF_CERT_FILE, cert), (LEAF_KEY_FILE, key)):  # fmt: skip
        path = home / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(0o600)


def routes(address: str) -> set[str]:
    """The servers `address`'s server routes to (each over a pool of connections)."""
    url = f"http://{address}:{MONITOR_PORT}/routez"
    with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310 - a test's own server
        found: dict[str, Any] = json.load(answer)
    return {r.get("remote_name", "") for r in found.get("routes") or []}


def tls_versions(addresses: list[str]) -> list[str]:
    """The TLS versions of the clients called `test` on these servers (empty string: plain)."""
    found = []
    for address in addresses:
        url = f"http://{address}:{MONITOR_PORT}/connz"
        with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310 - a test's own
            connections = json.load(answer).get("connections") or []
        found += [c.get("tls_version", "") for c in connections if c.get("name") == "test"]
    return found


async def connect(servers: ServerSet, trust: ClientTrust | None, timeout: float = 5) -> NatsStore:
    store = await open_store(
        servers.urls(), "agent", servers.config.passwords["agent"], name="test",
        timeout=timeout, trust=trust,
    )  # fmt: skip
    assert isinstance(store, NatsStore)
    return store


async def forwarder(address: str) -> asyncio.Server:
    """A local port that forwards to `address`'s client port, as meshctl's SSH tunnel does."""

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        far_reader, far_writer = await asyncio.open_connection(address, CLIENT_PORT)
        await asyncio.gather(pipe(reader, far_writer), pipe(far_reader, writer))

    return await asyncio.start_server(forward, "127.0.0.1", 0)


async def read_through_a_forward(address: str, config: MeshConfig) -> bytes | None:
    local = await forwarder(address)
    try:
        url = f"nats://127.0.0.1:{local.sockets[0].getsockname()[1]}"
        password = config.passwords["agent"]
        store = await open_store([url], "agent", password, name="test", trust=config.trust())
        try:
            entry = await store.get(subjects.NODES_BUCKET, "web1")
            return entry.value if entry else None
        finally:
            await store.close()
    finally:
        local.close()


def plain_client_answer(address: str) -> tuple[dict[str, Any], bytes]:
    """What a client that speaks no TLS hears: the server's INFO, then its answer to a
    CONNECT with the right password and a PING."""
    with socket.create_connection((address, CLIENT_PORT), timeout=5) as sock:
        info = json.loads(sock.recv(4096).decode().removeprefix("INFO ").strip())
        sock.sendall(b'CONNECT {"verbose":false,"user":"agent","pass":"x"}\r\nPING\r\n')
        answer = b""
        try:
            while chunk := sock.recv(4096):
                answer += chunk
        except OSError:
            pass
    return info, answer


async def test_servers_route_over_tls_and_only_mesh_clients_connect(tmp_path: Path) -> None:
    ca, other = make_ca(MESH, NOW), make_ca(MESH, NOW)
    addresses = loopback_addresses(4)
    names = ("master", "web1", "web2", "rogue")
    core = tuple(CoreServer(n, a) for n, a in zip(names, addresses, strict=True))
    config = MeshConfig(
        mesh=MESH, core=core[:3], passwords=new_passwords(), tls_ca=ca.cert_pem.decode()
    )
    trust = config.trust()
    assert trust is not None and trust.server_name == "nats.tls.meshd"
    for server in core[:3]:
        write_certificates(tmp_path / "servers" / server.name, ca, server, ca)
    write_certificates(tmp_path / "servers" / "rogue", ca, core[3], other)
    with server_set(tmp_path / "servers", config) as servers:
        servers.start()
        await until(lambda: all(len(routes(a)) == 2 for a in addresses[:3]), "TLS routes", 30)

        store = await connect(servers, trust)
        try:
            assert store._nc.connected_url.scheme == "tls"
            assert await until(lambda: tls_versions(addresses[:3]), "the client seen") == ["1.3"]
            await until(store.jetstream_answers, "a JetStream meta leader", 30)
            await store.ensure(replicas=3)
            await store.put(subjects.NODES_BUCKET, "web1", b"reported over TLS")
            entry = await store.get(subjects.NODES_BUCKET, "web1")
            assert entry is not None and entry.value == b"reported over TLS"
        finally:
            await store.close()

        # Through a tunnel's local port the server's name is still what is checked.
        assert await read_through_a_forward(addresses[1], config) == b"reported over TLS"

        refused: list[ClientTrust | None] = [
            None,  # the system's CAs: the mesh's certificates are not among them
            ClientTrust(other.cert_pem.decode(), trust.server_name),
            ClientTrust(trust.ca_pem, "nats.another-mesh.meshd"),
        ]
        for wrong in refused:
            with pytest.raises(StoreUnavailable):
                await connect(servers, wrong, timeout=2)

        info, answer = plain_client_answer(addresses[0])
        assert info["tls_required"] is True
        assert b"PONG" not in answer

        # A server with the route password but another CA's certificate joins no route.
        rogue_config = MeshConfig(
            mesh=MESH, core=core, passwords=config.passwords, tls_ca=config.tls_ca
        )
        servers.reconfigure(rogue_config)
        servers.start("rogue")
        log = tmp_path / "servers" / "rogue" / "nats-server.log"
        await until(lambda: "TLS route handshake error" in log.read_text(), "the rogue refused", 30)
        await asyncio.sleep(1)  # a route that would form forms within this
        assert routes(addresses[3]) == set()
        for address in addresses[:3]:
            assert "rogue" not in routes(address)
