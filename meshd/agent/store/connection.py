"""How the store connects to NATS: the client's options, and TLS from the mesh CA where the
mesh has one (the CA's certificate only is trusted, and every server must show the mesh's
server name, also through an SSH tunnel's local port)."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from meshd.core.trust import ClientTrust

log = logging.getLogger(__name__)
# nats-py's protocol asks to stay half open when a TLS server closes (every close does), and
# asyncio says it cannot, once per connection: `meshctl` would print it after every command.
SSL_EOF_NOISE = "returning true from eof_received() has no effect when using ssl"


class _NoSslEofNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != SSL_EOF_NOISE


_QUIET = _NoSslEofNoise()


def tls_context(trust: ClientTrust) -> ssl.SSLContext:
    """A client context that trusts the mesh CA and nothing else (not the system's CAs)."""
    logging.getLogger("asyncio").addFilter(_QUIET)  # once: the same filter is added once
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies certificate and host name
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cadata=trust.ca_pem)
    return context


def tls_urls(servers: Sequence[str]) -> list[str]:
    """`servers` with the `tls` scheme (servers found later are then TLS too)."""
    return [urlunsplit(urlsplit(s)._replace(scheme="tls")) for s in servers]


def connect_options(
    servers: Sequence[str],
    user: str,
    password: str,
    *,
    name: str,
    forever: bool,
    reconnects: int,
    inbox_prefix: str | None,
    trust: ClientTrust | None,
) -> dict[str, Any]:
    """nats.connect's keyword arguments."""

    async def on_error(err: Exception) -> None:
        log.debug("NATS connection error. error=%s", err)

    async def on_disconnect() -> None:
        log.info("Disconnected from NATS.")

    async def on_reconnect() -> None:
        log.info("Reconnected to NATS.")

    options: dict[str, Any] = {
        "servers": list(servers),
        "user": user,
        "password": password,
        "name": name,
        "connect_timeout": 1.0 if trust is None else 2.0,  # a TLS handshake through SSH
        "allow_reconnect": True,
        "max_reconnect_attempts": -1 if forever else reconnects,
        "reconnect_time_wait": 0.5,
        "ping_interval": 5,
        "max_outstanding_pings": 2,
        "error_cb": on_error,
        "disconnected_cb": on_disconnect,
        "reconnected_cb": on_reconnect,
    }
    if inbox_prefix is not None:
        options["inbox_prefix"] = inbox_prefix
    if trust is not None:
        options["servers"] = tls_urls(servers)
        options["tls"] = tls_context(trust)
        options["tls_hostname"] = trust.server_name
    return options
