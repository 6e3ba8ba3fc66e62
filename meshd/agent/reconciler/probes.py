"""Health of the built-in datastores by their own protocol, in-process and cheap (no client
forked every few seconds, no driver in the agent): PostgreSQL is healthy when it answers a
startup message with an authentication request (what `pg_isready` checks: it accepts
connections, it is not starting up or shutting down), Redis when `AUTH` then `PING` answer
`+OK` and `+PONG` (the password it holds is the one the mesh gave it)."""

from __future__ import annotations

import asyncio
import struct

from meshd.core.spec import TEMPLATE_SECRETS, ServiceKind
from plugins.runtimes import builtin_datastore
from plugins.secrets import Secrets
from protocol.messages import Allocation

PROTOCOL_3 = 196608  # PostgreSQL's frontend/backend protocol 3.0
PROBE_USER = "meshd_probe"  # need not exist: the server asks for a password all the same


def startup_message(user: str, database: str) -> bytes:
    """A PostgreSQL StartupMessage (protocol 3.0)."""
    body = struct.pack("!I", PROTOCOL_3)
    for name, value in (("user", user), ("database", database)):
        body += name.encode() + b"\0" + value.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def asks_to_authenticate(answer: bytes) -> bool:
    """Whether the server's first message is an authentication request ('R'); an error
    ('E': starting up, shutting down, too many connections) is not healthy."""
    return answer[:1] == b"R"


def redis_command(*parts: bytes) -> bytes:
    """One command in RESP (an array of bulk strings)."""
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


async def postgres_ready(host: str, port: int, timeout: float) -> bool:  # noqa: ASYNC109
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(startup_message(PROBE_USER, PROBE_USER))
                await writer.drain()
                return asks_to_authenticate(await reader.read(1))
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return False


async def redis_pong(host: str, port: int, password: bytes | None, timeout: float) -> bool:  # noqa: ASYNC109
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                if password is not None:
                    writer.write(redis_command(b"AUTH", password))
                writer.write(redis_command(b"PING"))
                await writer.drain()
                if password is not None and await reader.readline() != b"+OK\r\n":
                    return False
                return await reader.readline() == b"+PONG\r\n"
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return False


class DatastoreProbes:
    """Which instances run a built-in datastore on this droplet's runtime, and their probe
    (with the password the mesh gave that environment's Redis)."""

    def __init__(self, runtime: str, secrets: Secrets) -> None:
        self.runtime = runtime
        self.secrets = secrets

    def kind(self, allocation: Allocation) -> str | None:
        return builtin_datastore(self.runtime, allocation)

    async def probe(self, allocation: Allocation, host: str, port: int, timeout: float) -> bool:  # noqa: ASYNC109
        kind = self.kind(allocation)
        if kind == ServiceKind.DATABASE:
            return await postgres_ready(host, port, timeout)
        secret = TEMPLATE_SECRETS[ServiceKind.REDIS]
        password = self.secrets.get(secret, allocation.project, allocation.env)
        return await redis_pong(host, port, password and password.strip(), timeout)
