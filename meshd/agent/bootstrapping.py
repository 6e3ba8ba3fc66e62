"""Droplets that start bare (DigitalOcean) are made mesh nodes by the leader that created or
rebuilt them: `bootstrap.py` over SSH on their private address, with the key the account put
on every droplet (the mesh secret `infrastructure_key`, held in memory by the trusted droplets
that run these leaders), and the files their droplet directory needs: its identity, its user
data and, in a TLS mesh, the mesh CA's certificate and a certificate of its own that this
droplet issues it with the CA's key (the mesh secret `mesh_ca_key`; nats-server serves clients
and routes with it wherever JetStream moves). The cloud token and the keys are never written
to a droplet: they reach the agents that need them sealed (docs/secrets.md)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import bootstrap
from meshd.agent.certificates import mesh_ca, tls_files
from meshd.agent.config import MeshConfig
from meshd.core.secret_plan import INFRASTRUCTURE_KEY, MESH_CA_KEY
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


class DropletBootstrap:
    """What this droplet's leaders do to the droplets they create or rebuild, with the mesh
    secrets it holds; BootstrapFailed names the step that failed."""

    def __init__(self, droplet_dir: Path, config: MeshConfig, secrets: MeshSecret) -> None:
        self.dir = droplet_dir
        self.config = config
        self.secrets = secrets

    async def __call__(self, record: DropletRecord, user_data: str) -> bootstrap.Report:
        """Bootstrap `record` with `user_data` (a certificate of its own in a TLS mesh)."""
        files = node_files(record, user_data, await self._tls(record))
        runtime = str(self.config.runtime.get("name", "process"))
        return await bootstrap.bootstrap(await self._target(record), bootstrap.Node(
            record.name, files, runtime))  # fmt: skip

    async def renew_certificate(self, record: DropletRecord) -> bootstrap.Report:
        """A new NATS certificate for `record`, written over SSH (its supervisor reloads it)."""
        node = bootstrap.Node(record.name, await self._tls(record))
        return await bootstrap.write_files(await self._target(record), node)

    async def _tls(self, record: DropletRecord) -> dict[str, bytes]:
        if not self.config.tls_ca:
            return {}
        ca = await asyncio.to_thread(mesh_ca, self.config.tls_ca, self.dir, self.secrets)
        if ca is None:
            raise bootstrap.BootstrapFailed(
                record.address,
                "files",
                f"this droplet holds no mesh secret {MESH_CA_KEY} to issue its TLS with",
            )
        return await asyncio.to_thread(tls_files, ca, self.config.mesh, record)

    async def _target(self, record: DropletRecord) -> bootstrap.Target:
        import asyncssh

        private = await asyncio.to_thread(infrastructure_key, self.dir, self.secrets)
        if private is None:
            raise bootstrap.BootstrapFailed(
                record.address,
                "connect",
                f"this droplet holds no mesh secret {INFRASTRUCTURE_KEY} to reach it with",
            )
        python = self.config.bootstrap.get("python", bootstrap.VENV_PYTHON)
        return bootstrap.Target(record.address, asyncssh.import_private_key(private), python=python)
