"""Droplets that start bare (DigitalOcean) are made mesh nodes by the leader that created or
rebuilt them: `bootstrap.py` over SSH on their private address, with the key the account put
on every droplet (the mesh secret `infrastructure_key`, held in memory by the trusted droplets
that run these leaders), and the files their droplet directory needs: its identity, its user
data and, in a TLS mesh, the mesh CA and a certificate of its own that this droplet issues it
(nats-server serves clients and routes with it wherever JetStream moves). The cloud token and
the key are never written to a droplet: they reach the agents that need them sealed
(docs/secrets.md)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import bootstrap
from meshd.agent.certificates import own_ca, tls_files
from meshd.agent.config import CA_KEY_FILE, MeshConfig
from meshd.core.secret_plan import INFRASTRUCTURE_KEY
from plugins.providers import DropletRecord

# Where meshes made before the key was a mesh secret kept it on every droplet (0600): still
# used when the secret is not set there.
KEY_FILE = "secrets/infrastructure_key"
MeshSecret = Callable[[str], bytes | None]


def node_files(
    record: DropletRecord, user_data: str, secrets: dict[str, bytes]
) -> dict[str, bytes]:
    """A droplet directory for `record`: its identity, its user data and `secrets`."""
    identity = {"id": record.id, "name": record.name, "size": record.size,
                "address": record.address}  # fmt: skip
    return {"droplet.json": json.dumps(identity).encode(), "user_data": user_data.encode(),
            **secrets}  # fmt: skip


def infrastructure_key(droplet_dir: Path, secrets: MeshSecret) -> bytes | None:
    """The key to reach the mesh's droplets with: the mesh secret, else an older mesh's file."""
    found = secrets(INFRASTRUCTURE_KEY)
    if found:
        return found
    legacy = droplet_dir / KEY_FILE
    return legacy.read_bytes() if legacy.exists() else None


async def bootstrap_droplet(
    droplet_dir: Path,
    config: MeshConfig,
    secrets: MeshSecret,
    record: DropletRecord,
    user_data: str,
) -> bootstrap.Report:
    """Bootstrap `record` with `user_data`; BootstrapFailed names the step that failed."""
    import asyncssh

    files = node_files(record, user_data, {})
    if config.tls_ca:
        ca = await asyncio.to_thread(own_ca, droplet_dir)
        if ca is None:
            raise bootstrap.BootstrapFailed(
                record.address, "files", f"this droplet has no {CA_KEY_FILE} to issue its TLS with"
            )
        files.update(await asyncio.to_thread(tls_files, ca, config.mesh, record))
    private = await asyncio.to_thread(infrastructure_key, droplet_dir, secrets)
    if private is None:
        raise bootstrap.BootstrapFailed(
            record.address,
            "connect",
            f"this droplet holds no mesh secret {INFRASTRUCTURE_KEY} to reach it with",
        )
    key = asyncssh.import_private_key(private)
    target = bootstrap.Target(
        record.address, key, python=config.bootstrap.get("python", bootstrap.VENV_PYTHON)
    )
    node = bootstrap.Node(record.name, files, str(config.runtime.get("name", "process")))
    return await bootstrap.bootstrap(target, node)
