"""`meshctl dashboard`: where the mesh's web page is (`/_mesh/` on the entry address,
docs/dashboard.md) and whether its login is set. The password is the mesh secret
`dashboard_password`: `--new-password` makes a random one, seals it to the mesh, waits until
the entry point's droplet holds it and prints it once; nothing on this machine keeps it, and
every open session ends (sessions are signed with a key drawn from it)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import click

from meshd.agent.store import Store
from meshd.cli.cloud_secrets import wait_mesh_key
from meshd.cli.context import load_context, who
from meshd.cli.secret import write_value
from meshd.cli.secret_rollout import Scope
from meshd.cli.session import connect
from meshd.cli.tables import console
from meshd.core.dashboard import PASSWORD_SECRET
from meshd.core.sealing import random_secret
from protocol import subjects
from protocol.codec import decode
from protocol.errors import MeshError
from protocol.messages import Lease
from protocol.secrets import SealedSecret, SecretValue

SEALED_WAIT_S = 60.0


@click.command()
@click.option("--new-password", is_flag=True,
              help="Make a new random password, seal it to the mesh and print it once (open "
              "sessions end).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print JSON: url, password_set, password.")
@click.option("--context", "context_name", metavar="NAME", help="Mesh to talk to.")
def dashboard(new_password: bool, as_json: bool, context_name: str | None) -> None:
    """Where the dashboard is and how to sign in.

    \b
    The page is on the entry address at /_mesh/: droplets, services, releases, failures,
    events and an hour's chart, updated live. Its password is the mesh secret
    dashboard_password: set your own with `meshctl secret set --mesh dashboard_password`.
    """
    found = asyncio.run(_dashboard(new_password, context_name))
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    console.print(f"Dashboard: {found['url'] or 'no entry address known (meshctl status)'}")
    if found["password"]:
        console.print(f"Password: {found['password']}  (shown once; not kept on this machine)")
    elif found["password_set"]:
        console.print(f"Password: set by {found['set_by']} (`--new-password` makes a new one).")
    else:
        console.print("Password: not set yet; `meshctl dashboard --new-password` makes one.")


async def _dashboard(new_password: bool, context_name: str | None) -> dict[str, Any]:
    context = load_context(context_name)
    store = await connect(context)
    scope = Scope(PASSWORD_SECRET)
    password = None
    try:
        if new_password:
            password = random_secret()
            stored = await write_value(store, scope, password.encode(), await wait_mesh_key(store),
                                       rotate=False)  # fmt: skip
            detail = {"name": scope.name, "scope": scope.kind.value, "version": stored.version}
            await store.record("secret_set", who(), scope.key, detail)
            with console.status("Sealing it to the entry point's droplet ..."):
                await _wait_sealed_to_entry(store, stored.version)
        entry = await store.get(subjects.SECRETS_BUCKET, scope.key)
        current = decode(entry.value, SecretValue) if entry and entry.value else None
    finally:
        await store.close()
    return {
        "url": f"{context.entry_url.rstrip('/')}/_mesh/" if context.entry_url else None,
        "password_set": current is not None,
        "set_by": current.set_by if current else None,
        "password": password,
    }


async def _wait_sealed_to_entry(store: Store, version: int) -> None:
    deadline = time.monotonic() + SEALED_WAIT_S
    while time.monotonic() < deadline:
        lease = await store.get(subjects.LEASES_BUCKET, "lb")
        if lease is not None and lease.value is not None:
            holder = decode(lease.value, Lease).holder
            key = subjects.sealed_key(holder, PASSWORD_SECRET)
            sealed = await store.get(subjects.SECRETS_BUCKET, key)
            if sealed and sealed.value and decode(sealed.value, SealedSecret).version >= version:
                return
        await asyncio.sleep(0.3)
    raise MeshError(
        f"the new password is stored, but the entry point's droplet did not have it within "
        f"{SEALED_WAIT_S:.0f} s (the `secrets` role seals it); see `meshctl status`"
    )
