"""`meshctl secret`: set, list, remove and rotate the mesh's secrets (docs/secrets.md). A value
is sealed here to the mesh key before it leaves this machine; the `secrets` role seals it on
to the droplets whose services use it. Values never come from an argument and are never
printed."""

from __future__ import annotations

import asyncio
import getpass
import json
import re
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import click

from meshd.agent.backoff import retries
from meshd.agent.store import Conflict, Store
from meshd.cli.context import load_context, who
from meshd.cli.escrow import export_key
from meshd.cli.secret_rollout import Rollout, Scope, datastores_runtime, secret_values
from meshd.cli.secret_rollout import roll as _roll
from meshd.cli.session import check_project, connect, read_allocations, read_published
from meshd.cli.tables import console, secrets_table
from meshd.core.notify_settings import CHANNELS, NotifySettings
from meshd.core.sealing import from_text, random_secret, seal_value
from meshd.core.secret_plan import (
    CLOUD_TOKEN,
    INFRASTRUCTURE_KEY,
    MESH_CA_KEY,
    WEBHOOK_SECRET,
    used_by,
    webhook_projects,
)
from meshd.core.spec import ENVIRONMENTS, DesiredState
from protocol import subjects
from protocol.codec import decode, encode
from protocol.errors import MeshError
from protocol.messages import Allocation
from protocol.secrets import MeshKey, SecretScope, SecretValue

NAME = re.compile(r"^[a-z0-9_]{1,64}$")
MESH_KEY_WAIT_S = 30.0  # right after `up`, the `secrets` role may not have made it yet
MAX_VALUE_BYTES = 64 * 1024


def scope_of(args: tuple[str, ...], mesh: bool) -> Scope:
    """`--mesh NAME`, `PROJECT NAME` or `PROJECT ENV NAME`; UsageError otherwise."""
    if mesh and len(args) != 1:
        raise click.UsageError("with --mesh give only NAME")
    if not mesh and len(args) not in (2, 3):
        raise click.UsageError("give --mesh NAME, PROJECT NAME or PROJECT ENV NAME")
    *where, name = args
    if not NAME.match(name):
        raise click.UsageError(
            f"secret name {name!r} is not valid: use 1-64 of a-z, 0-9 and _ (e.g. db_password)"
        )
    if len(where) == 2 and where[1] not in ENVIRONMENTS:
        raise click.UsageError(f"environment {where[1]!r} is not one of {', '.join(ENVIRONMENTS)}")
    return Scope(name, *where)


@click.group()
def secret() -> None:
    """The mesh's secrets: sealed to the droplets that need them, never stored in clear.

    \b
    A scope is --mesh (the mesh itself and every project), PROJECT or PROJECT ENV; a service
    gets the narrowest value there is, as the file /run/secrets/<name>.
    """


secret.add_command(export_key)
where_arguments = click.argument("where", nargs=-1, metavar="[--mesh | PROJECT [ENV]] NAME")
mesh_option = click.option("--mesh", is_flag=True, help="A secret of the whole mesh.")
context_option = click.option("--context", "context_name", metavar="NAME", help="Mesh to talk to.")
restart_option = click.option(
    "--no-restart", is_flag=True, help="Do not roll the services that use it (they get it later)."
)


@secret.command("set", no_args_is_help=True)
@where_arguments
@mesh_option
@click.option(
    "--from-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Read the value from this file (as it is). Default: stdin, or a prompt.",
)
@restart_option
@click.option("--json", "as_json", is_flag=True, help="Print what was done as JSON.")
@context_option
def set_secret(
    where: tuple[str, ...],
    mesh: bool,
    from_file: Path | None,
    no_restart: bool,
    as_json: bool,
    context_name: str | None,
) -> None:
    """Set a secret: its value from a prompt (not echoed), stdin, or --from-file; never from
    an argument. The services that use it are rolled with no request lost (--no-restart:
    not now)."""
    scope = scope_of(where, mesh)
    value = read_value(from_file, scope)
    asyncio.run(_store_value(scope, value, not no_restart, as_json, context_name, rotate=False))


@secret.command("rotate", no_args_is_help=True)
@where_arguments
@mesh_option
@restart_option
@click.option("--json", "as_json", is_flag=True, help="Print what was done as JSON.")
@context_option
def rotate_secret(
    where: tuple[str, ...], mesh: bool, no_restart: bool, as_json: bool, context_name: str | None
) -> None:
    """Give an existing secret a new random value (32 bytes, URL-safe text) and roll the
    services that use it."""
    scope = scope_of(where, mesh)
    value = random_secret().encode()
    asyncio.run(_store_value(scope, value, not no_restart, as_json, context_name, rotate=True))


@secret.command("rm", no_args_is_help=True)
@where_arguments
@mesh_option
@context_option
def remove_secret(where: tuple[str, ...], mesh: bool, context_name: str | None) -> None:
    """Remove a secret. Instances that have it keep their file until they are replaced; new
    ones of a service that still uses it wait for a value."""
    asyncio.run(_remove(scope_of(where, mesh), context_name))


@secret.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: one object per secret.")
@context_option
def list_secrets(as_json: bool, context_name: str | None) -> None:
    """Names, scopes, versions, who set them and when, and which services use them; never
    values."""
    asyncio.run(_list(as_json, context_name))


def read_value(from_file: Path | None, scope: Scope) -> bytes:
    if from_file is not None:
        value = from_file.read_bytes()
    elif not sys.stdin.isatty():
        value = sys.stdin.buffer.read(MAX_VALUE_BYTES + 1).removesuffix(b"\n")
    else:
        value = getpass.getpass(f"Value of {scope}: ").encode()
        if getpass.getpass("Again: ").encode() != value:
            raise click.UsageError("the two values differ; nothing was set")
    if not value:
        raise click.UsageError(f"the value of {scope} is empty; nothing was set")
    if len(value) > MAX_VALUE_BYTES:
        raise click.UsageError(f"the value is over {MAX_VALUE_BYTES // 1024} KiB; nothing was set")
    return value


async def _check_project(store: Store, scope: Scope) -> None:
    if scope.project is not None:
        await check_project(store, scope.project)


async def _mesh_key(store: Store) -> MeshKey:
    """The mesh's public key, waited for a while: right after `up` the `secrets` role may
    not have made it yet (its first pass comes once it holds the lease)."""
    deadline = time.monotonic() + MESH_KEY_WAIT_S
    while True:
        entry = await store.get(subjects.SECRETS_BUCKET, subjects.MESH_KEY)
        if entry is not None and entry.value is not None:
            return decode(entry.value, MeshKey)
        if time.monotonic() > deadline:
            raise MeshError(
                f"the mesh has no secret key after {MESH_KEY_WAIT_S:.0f} s (its `secrets` role "
                "makes it within seconds of start); see `meshctl status` and `meshctl events`"
            )
        await asyncio.sleep(0.5)


async def _store_value(
    scope: Scope, value: bytes, roll: bool, as_json: bool, context_name: str | None, rotate: bool
) -> None:
    context = load_context(context_name)
    runtime = datastores_runtime(context.runtime)
    store = await connect(context)
    try:
        await _check_project(store, scope)
        public = await _mesh_key(store)
        stored = await write_value(store, scope, value, public, rotate)
        detail: dict[str, Any] = {"name": scope.name, "scope": scope.kind.value}
        detail |= {"project": scope.project, "env": scope.env, "version": stored.version}
        await store.record("secret_rotated" if rotate else "secret_set", who(), scope.key, detail)
        done = Rollout([], [], [])
        if roll:
            done = await _roll(store, scope, stored.version, runtime)
    finally:
        await store.close()
    result = {**detail, "rolled": done.rolled, "changed_in_place": done.changed}
    result["not_restarted"] = done.kept
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    console.print(f"{'Rotated' if rotate else 'Set'} {scope}: version {stored.version}.")
    for key in done.changed:
        console.print(f"{key} took the new password in place (no restart).")
    for key in done.rolled:
        console.print(f"Rolling {key} (follow with `meshctl status`).")
    for key in done.kept:
        console.print(f"{key} is a datastore: restart it yourself when it can take the new value.")


async def write_value(
    store: Store, scope: Scope, value: bytes, mesh: MeshKey, rotate: bool
) -> SecretValue:
    async for _ in retries(0.05, 0.5, attempts=5):  # another operator wrote meanwhile
        entry = await store.get(subjects.SECRETS_BUCKET, scope.key)
        previous = decode(entry.value, SecretValue) if entry and entry.value else None
        if rotate and previous is None:
            raise click.UsageError(f"no secret {scope} to rotate; set it first")
        version = previous.version + 1 if previous else 1
        stored = SecretValue(
            name=scope.name,
            scope=scope.kind,
            project=scope.project,
            env=scope.env,
            version=version,
            sealed=seal_value(from_text(mesh.public, "mesh key"), scope.key, version, value),
            mesh_key=mesh.fingerprint,
            set_by=who(),
            set_at=time.time(),
        )
        try:
            if entry is None or entry.value is None:
                await store.create(subjects.SECRETS_BUCKET, scope.key, encode(stored))
            else:
                await store.update(
                    subjects.SECRETS_BUCKET, scope.key, encode(stored), last=entry.revision
                )
        except Conflict:
            continue
        return stored
    raise MeshError(f"secret {scope}: others kept writing it at the same time; try again")


async def _remove(scope: Scope, context_name: str | None) -> None:
    store = await connect(load_context(context_name))
    try:
        entry = await store.get(subjects.SECRETS_BUCKET, scope.key)
        if entry is None or entry.value is None:
            raise click.UsageError(f"no secret {scope}")
        allocations = await read_allocations(store)
        users = used_by(scope.key, allocations.values(), await secret_values(store))
        await store.delete(subjects.SECRETS_BUCKET, scope.key)
        detail = {"name": scope.name, "scope": scope.kind.value}
        await store.record("secret_removed", who(), scope.key, detail)
    finally:
        await store.close()
    console.print(f"Removed {scope}.")
    if users:
        console.print(f"Still used by {', '.join(users)}: set it again, or a narrower one.")


# The mesh secrets that hold the vault login, by `vault.auth` (plugins.secrets.vault).
VAULT_LOGINS = {"token": ("vault_token",), "approle": ("vault_role_id", "vault_secret_id")}


def mesh_users(state: DesiredState | None) -> dict[str, list[str]]:
    """The mesh-scoped secrets the mesh itself uses, and what for."""
    users: dict[str, list[str]] = defaultdict(list)
    users[CLOUD_TOKEN].append("mesh (provider)")  # a cloud mesh's, set by `up`
    users[INFRASTRUCTURE_KEY].append("mesh (SSH to droplets)")
    users[MESH_CA_KEY].append("mesh (NATS certificates)")
    if state is None:
        return dict(users)
    for channel, config in NotifySettings.from_data(state.notify).configured().items():
        users[CHANNELS[channel].secret_name(config)].append(f"mesh ({channel})")
    if state.vault:
        for name in VAULT_LOGINS.get(str(state.vault.get("auth", "token")), ()):
            users[name].append("mesh (vault login)")
    return dict(users)


def secret_rows(
    values: dict[str, SecretValue],
    allocations: dict[str, Allocation],
    state: DesiredState | None = None,
) -> list[dict[str, Any]]:
    mesh = mesh_users(state)
    webhook_keys = {subjects.secret_value_key(WEBHOOK_SECRET, p) for p in webhook_projects(values)}
    return [
        {
            "name": value.name,
            "scope": value.scope.value,
            "project": value.project,
            "env": value.env,
            "version": value.version,
            "set_by": value.set_by,
            "set_at": value.set_at,
            "generated": value.generated,
            "used_by": [
                *(mesh.get(value.name, []) if value.scope is SecretScope.MESH else []),
                *([f"{value.project} (webhooks)"] if key in webhook_keys else []),
                *used_by(key, allocations.values(), values),
            ],
        }
        for key, value in sorted(values.items())
    ]


async def _list(as_json: bool, context_name: str | None) -> None:
    store = await connect(load_context(context_name))
    try:
        state = await read_published(store)
        rows = secret_rows(await secret_values(store), await read_allocations(store), state)
    finally:
        await store.close()
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return
    if not rows:
        console.print("No secrets yet: `meshctl secret set --help`.")
        return
    console.print(secrets_table(rows))
