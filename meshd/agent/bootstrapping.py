"""Droplets that start bare (DigitalOcean) are made mesh nodes by the leader that created or
rebuilt them: `bootstrap.py` over SSH on their private address, with the files their droplet
directory needs, the secrets among them copied from this droplet's own (0600 on both). In a
TLS mesh these are the mesh CA too, and a certificate of its own that this droplet issues it
(nats-server serves clients and routes with it wherever JetStream moves)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import bootstrap
from meshd.agent.certificates import own_ca, tls_files
from meshd.agent.config import CA_KEY_FILE, MeshConfig
from plugins.providers import DropletRecord

SECRETS_DIR = "secrets"
KEY_FILE = f"{SECRETS_DIR}/infrastructure_key"  # the key the account puts on every droplet
TOKEN_FILE = f"{SECRETS_DIR}/digitalocean-token"


def node_files(
    record: DropletRecord, user_data: str, secrets: dict[str, bytes]
) -> dict[str, bytes]:
    """A droplet directory for `record`: its identity, its user data and `secrets`."""
    identity = {"id": record.id, "name": record.name, "size": record.size,
                "address": record.address}  # fmt: skip
    return {"droplet.json": json.dumps(identity).encode(), "user_data": user_data.encode(),
            **secrets}  # fmt: skip


def own_secrets(droplet_dir: Path) -> dict[str, bytes]:
    """The secrets this droplet has of those a droplet it bootstraps needs."""
    return {name: (droplet_dir / name).read_bytes()
            for name in (KEY_FILE, TOKEN_FILE) if (droplet_dir / name).exists()}  # fmt: skip


async def bootstrap_droplet(
    droplet_dir: Path, config: MeshConfig, record: DropletRecord, user_data: str
) -> bootstrap.Report:
    """Bootstrap `record` with `user_data`; BootstrapFailed names the step that failed."""
    import asyncssh

    files = node_files(record, user_data, await asyncio.to_thread(own_secrets, droplet_dir))
    if config.tls_ca:
        ca = await asyncio.to_thread(own_ca, droplet_dir)
        if ca is None:
            raise bootstrap.BootstrapFailed(
                record.address, "files", f"this droplet has no {CA_KEY_FILE} to issue its TLS with"
            )
        files.update(await asyncio.to_thread(tls_files, ca, config.mesh, record))
    try:
        key = asyncssh.import_private_key(files[KEY_FILE])
    except KeyError:
        raise bootstrap.BootstrapFailed(
            record.address, "connect", f"this droplet has no {KEY_FILE} to reach it with"
        ) from None
    target = bootstrap.Target(
        record.address, key, python=config.bootstrap.get("python", bootstrap.VENV_PYTHON)
    )
    node = bootstrap.Node(record.name, files, str(config.runtime.get("name", "process")))
    return await bootstrap.bootstrap(target, node)
