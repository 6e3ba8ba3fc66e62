"""What a cloud mesh's agents need of the operator's own secrets, handed over by `up` as mesh
secrets (docs/secrets.md): the provider's API token (`digitalocean_token`), the SSH key the
account puts on every droplet (`infrastructure_key`) and the mesh CA's key (`mesh_ca_key`),
sealed here to the mesh key as `meshctl secret set --mesh` does. The `secrets` role then seals
them to the trusted droplets (the token also to those that attach a volume); no droplet keeps
one in a file. Set once: `up` run again leaves them; `meshctl secret set --mesh
digitalocean_token` replaces the token."""

from __future__ import annotations

import asyncio
import time

from meshd.agent.store import Store
from meshd.cli.context import Context, who
from meshd.cli.secret import write_value
from meshd.cli.secret_rollout import Scope
from meshd.cli.session import connect
from meshd.cli.tables import console
from protocol import subjects
from protocol.codec import decode
from protocol.errors import MeshError
from protocol.secrets import MeshKey

MESH_KEY_TIMEOUT_S = 120.0  # master's `secrets` role makes it within seconds of its start


async def hand_over(context: Context, values: dict[str, bytes]) -> None:
    """Each of `values` (by secret name) stored as a mesh secret unless one is already."""
    store = await connect(context)
    try:
        missing = {}
        for name, value in values.items():
            if await _stored(store, Scope(name)):
                continue
            if not value:
                raise MeshError(f"up: the mesh has no secret {name}, and this machine has none "
                                "to give it (DIGITALOCEAN_TOKEN or --token-file)")  # fmt: skip
            missing[name] = value
        if not missing:
            return
        mesh_key = await wait_mesh_key(store)
        for name, value in missing.items():
            scope = Scope(name)
            stored = await write_value(store, scope, value, mesh_key, rotate=False)
            detail = {"name": name, "scope": scope.kind.value, "version": stored.version}
            await store.record("secret_set", who(), scope.key, detail)
            console.print(f"Sealed {name} to the mesh (a mesh secret; no droplet keeps a file).")
    finally:
        await store.close()


async def _stored(store: Store, scope: Scope) -> bool:
    entry = await store.get(subjects.SECRETS_BUCKET, scope.key)
    return entry is not None and entry.value is not None


async def wait_mesh_key(store: Store) -> MeshKey:
    """The mesh key's public half, once master's `secrets` role has made it."""
    deadline = time.monotonic() + MESH_KEY_TIMEOUT_S
    while time.monotonic() < deadline:
        entry = await store.get(subjects.SECRETS_BUCKET, subjects.MESH_KEY)
        if entry is not None and entry.value is not None:
            return decode(entry.value, MeshKey)
        await asyncio.sleep(1.0)
    raise MeshError(
        f"the mesh made no secret key in {MESH_KEY_TIMEOUT_S:.0f} s (master's `secrets` role); "
        "see `meshctl status`, then try again"
    )
