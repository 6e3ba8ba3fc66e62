"""What a NATS client of a TLS mesh verifies servers with (the certificates themselves:
meshd/core/meshca.py)."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ClientTrust:
    """The mesh CA's certificate (PEM), the only one trusted, and the name every server's
    certificate carries, which clients verify whatever address they reach it on."""

    ca_pem: str
    server_name: str


def server_name(mesh: str) -> str:
    """The DNS name in every server's leaf, which clients verify: `nats.<mesh>.meshd`."""
    label = re.sub(r"[^a-z0-9-]+", "-", mesh.lower()).strip("-")[:63] or "mesh"
    return f"nats.{label}.meshd"


def trust(mesh: str, ca_pem: str | None) -> ClientTrust | None:
    """The trust of a mesh whose CA certificate is `ca_pem`; None without one (plain NATS)."""
    return ClientTrust(ca_pem, server_name(mesh)) if ca_pem else None
