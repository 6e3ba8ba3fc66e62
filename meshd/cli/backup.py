"""`meshctl backup now|list|restore|verify|target|restore-mesh`: the datastores' backups
(docs/backups.md). All but `target` are orders to the mesh's `backups` leader
(`mesh.backups.order`), which does the work where each datastore runs and holds the keys; the
target's keys are the index. `restore-mesh` (meshd.cli.restore_mesh) makes a new mesh from a
lost one's backups."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

import click

from meshd.agent.store import Store, StoreUnavailable
from meshd.cli.context import load_context, who
from meshd.cli.restore_mesh import restore_mesh
from meshd.cli.session import check_project, connect
from meshd.cli.tables import console
from meshd.core.backup_policy import parse_backup_key
from meshd.core.mesh_restore import age_text
from meshd.core.spec import ENVIRONMENTS
from protocol import subjects
from protocol.backups import BackupOrder, BackupOrderAnswer, BackupTargetSpec, ListedBackup
from protocol.codec import decode, encode
from protocol.errors import MeshError
from protocol.messages import Lease

ORDER_TIMEOUT_S = 1800.0  # a restore: a safety backup, then the load, of a few GB each
LEADER_WATCH_S = 2.0  # how often the leader's lease is looked at while its answer is awaited
SUCCESSOR_WAIT_S = 60.0  # for a new leader, after one lost its role before it answered
context_option = click.option("--context", "context_name", metavar="NAME", help="Mesh to use.")
env_choice = click.Choice(ENVIRONMENTS)


@click.group()
def backup() -> None:
    """Backups of the datastores (PostgreSQL dumps, Redis): taken every 6 hours where each
    runs, encrypted to the mesh key before they leave its droplet, kept 14 days."""


backup.add_command(restore_mesh)


@backup.command("now", no_args_is_help=True)
@click.argument("project", required=False)
@click.argument("env", type=env_choice, required=False)
@click.argument("service", required=False)
@click.option(
    "--mesh", is_flag=True, help="Back up the mesh's own state and sealed secrets instead."
)
@click.option("--json", "as_json", is_flag=True, help="Print the backups taken as JSON.")
@context_option
def now(
    project: str | None,
    env: str | None,
    service: str | None,
    mesh: bool,
    as_json: bool,
    context_name: str | None,
) -> None:
    """Back up the datastores of PROJECT ENV (or only SERVICE) now; with --mesh, the mesh's
    state and sealed secrets (after `secret export-key`: what `restore-mesh` starts from)."""
    if mesh and project:
        raise click.UsageError("give --mesh alone, or PROJECT ENV [SERVICE]")
    if not mesh and not (project and env):
        raise click.UsageError("give PROJECT ENV [SERVICE], or --mesh")
    order = (
        BackupOrder(action="mesh", project="", env="", by=who())
        if mesh
        else BackupOrder(
            action="now", project=project or "", env=env or "", service=service, by=who()
        )
    )
    answer = asyncio.run(_order(order, context_name))
    if as_json:
        click.echo(json.dumps({"taken": list(answer.taken), "seconds": answer.seconds}))
        return
    for key in answer.taken:
        console.print(f"Backed up: {key}")
    console.print(f"Took {answer.seconds:.1f} s.")


@backup.command("list")
@click.argument("project", required=False)
@click.argument("env", type=env_choice, required=False)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per backup.")
@context_option
def list_backups(
    project: str | None, env: str | None, as_json: bool, context_name: str | None
) -> None:
    """The backups kept, newest first (of PROJECT, or PROJECT ENV)."""
    found = asyncio.run(_list(context_name))
    rows = []
    for stored in found:
        name = parse_backup_key(stored.key)
        if name is None or (project and name.project != project) or (env and name.env != env):
            continue
        rows.append(_row(stored, name.kind, name.project, name.env, name.service, name.at))
    rows.sort(key=lambda r: r["taken_at"], reverse=True)
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return
    if not rows:
        console.print("No backups yet.")
    for row in rows:
        age = age_text(time.time() - row["taken_at"])
        console.print(
            f"{row['key']}  {row['size_bytes'] / 2**20:.1f} MiB  {age} ago  sha256 "
            f"{row['sha256'][:12]}"
        )


@backup.command("restore", no_args_is_help=True)
@click.argument("project")
@click.argument("env", type=env_choice)
@click.argument("key", metavar="BACKUP")
@click.option(
    "--into",
    "into",
    type=env_choice,
    help="Restore into this environment instead (prod's backup into test: how to try prod data).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace the running datastore's data (a safety backup of it is taken first).",
)
@context_option
def restore(
    project: str, env: str, key: str, into: str | None, force: bool, context_name: str | None
) -> None:
    """Load BACKUP (a key from `backup list`) of PROJECT ENV into that environment's
    datastore, or into --into's."""
    name = parse_backup_key(key)
    if name is None or (name.project, name.env) != (project, env):
        raise click.UsageError(f"{key!r} is no backup of {project} {env} (`meshctl backup list`)")
    target = into or env
    if not force:
        raise click.UsageError(
            f"this replaces the data of {project} {target} {name.service}, which is running; "
            "a safety backup of it is taken first. Add --force to go ahead."
        )
    order = BackupOrder(
        action="restore", project=project, env=target, service=name.service, key=key, by=who()
    )
    answer = asyncio.run(_order(order, context_name))
    console.print(
        f"Restored {key} into {project} {target} {name.service} "
        f"({answer.seconds:.1f} s); what it had is in {answer.safety}."
    )


async def _order(order: BackupOrder, context_name: str | None) -> BackupOrderAnswer:
    store = await connect(load_context(context_name))
    try:
        if order.project:
            await check_project(store, order.project)
        with console.status("Waiting for the mesh's backups leader ..."):
            try:
                reply = await _asked(store, order)
            except LeaderLost as lost:  # its successor is asked once, when there is one
                await _successor(store, lost.term)
                reply = await _asked(store, order)
    finally:
        await store.close()
    if reply is None:
        raise MeshError(
            "no backups leader answered (it takes the role within seconds of a start; "
            "`meshctl status` shows who holds it)"
        )
    answer = decode(reply, BackupOrderAnswer)
    if answer.error is not None:
        raise MeshError(f"backup {order.action}: {answer.error}")
    return answer


class LeaderLost(MeshError):
    """The backups leader asked lost its role before it answered."""

    def __init__(self, action: str, term: tuple[str, int]) -> None:
        self.term = term
        super().__init__(
            f"backup {action}: the backups leader ({term[0]}) lost its role before it "
            "answered, and so did the next one; nothing was stored: try again"
        )


async def _successor(store: Store, lost: tuple[str, int]) -> None:
    deadline = time.monotonic() + SUCCESSOR_WAIT_S
    while time.monotonic() < deadline:
        if (await _term(store)) not in (None, lost):
            return
        await asyncio.sleep(LEADER_WATCH_S)


async def _asked(store: Store, order: BackupOrder) -> bytes | None:
    """The leader's answer (None: no leader answered). A leader that loses its role meanwhile
    (a JetStream election outlasted its lease, or its droplet died) never answers: given up
    once the role has moved, not after the full timeout."""
    asked = await _term(store)
    asking = asyncio.ensure_future(
        store.request(subjects.BACKUP_ORDERS, encode(order), ORDER_TIMEOUT_S)
    )
    try:
        while not (await asyncio.wait({asking}, timeout=LEADER_WATCH_S))[0]:
            now = await _term(store)
            if asked is not None and now is not None and now != asked:
                raise LeaderLost(order.action, asked)
            asked = asked or now
    finally:
        asking.cancel()
    return asking.result()


async def _term(store: Store) -> tuple[str, int] | None:
    """Who holds the `backups` role: the droplet and its agent's life (None: unknown just
    now). The same agent taking the role again after losing it goes unnoticed (and its
    answer is waited for until the timeout)."""
    try:
        entry = await store.get(subjects.LEASES_BUCKET, subjects.lease_key(subjects.Role.BACKUPS))
    except StoreUnavailable:
        return None
    if entry is None or not entry.value:
        return None
    lease = decode(entry.value, Lease)  # its acquired_at is rewritten at every renewal
    return lease.holder, lease.incarnation


async def _list(context_name: str | None) -> list[ListedBackup]:
    order = BackupOrder(action="list", project="", env="", by=who())
    return list((await _order(order, context_name)).listed)


def _row(
    stored: ListedBackup, kind: str, project: str, env: str, service: str, at: float
) -> dict[str, Any]:
    return {
        "key": stored.key,
        "kind": kind,
        "project": project,
        "env": env,
        "service": service,
        "taken_at": at,
        "taken": datetime.fromtimestamp(at, UTC).isoformat(),
        "size_bytes": stored.size,
        "sha256": stored.sha256,
    }


@backup.command("verify")
@click.argument("project", required=False)
@click.argument("env", type=env_choice, required=False)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per backup verified.")
@context_option
def verify(project: str | None, env: str | None, as_json: bool, context_name: str | None) -> None:
    """A restore drill: the newest backup of each datastore (of PROJECT, or PROJECT ENV) is
    loaded into a scratch instance beside it, counted, and removed; the datastores are not
    touched. Exits 1 when one does not load (and the mesh sends a critical alert)."""
    order = BackupOrder(action="verify", project=project or "", env=env or "", by=who())
    answer = asyncio.run(_order(order, context_name))
    for found in answer.verified:
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "key": found.key,
                        "ok": found.error is None,
                        "error": found.error,
                        "counted": found.counted,
                        "seconds": found.seconds,
                    }
                )
            )
            continue
        if found.error is not None:
            console.print(f"[red]{found.key}: does not load[/]: {found.error}")
        elif "rows" in found.counted:
            tables = found.counted.get("tables", {})
            console.print(
                f"{found.key}: loads; {found.counted['rows']} rows in "
                f"{len(tables)} table{'s' if len(tables) != 1 else ''}"
            )
        else:
            console.print(f"{found.key}: loads; {found.counted.get('keys', 0)} keys")
    if not answer.verified and not as_json:
        console.print("No backups to verify yet (`meshctl backup now`).")
    if any(found.error is not None for found in answer.verified):
        sys.exit(1)


@backup.command("target")
@click.argument("name", type=click.Choice(["objects", "s3"]), required=False)
@click.option("--endpoint", help="s3: the service's URL, e.g. https://fra1.digitaloceanspaces.com")
@click.option("--bucket", help="s3: the bucket (it must exist)")
@click.option("--access-key", "access_key", help="s3: the access key id")
@click.option("--region", default="us-east-1", show_default=True, help="s3: the region")
@click.option("--prefix", default="", help="s3: a prefix for every key")
@context_option
def target(
    name: str | None,
    endpoint: str | None,
    bucket: str | None,
    access_key: str | None,
    region: str,
    prefix: str,
    context_name: str | None,
) -> None:
    """Where backups are kept: `objects` (the mesh's own object store, the default: lost with
    the whole mesh) or `s3` (any S3-compatible store, e.g. DigitalOcean Spaces; its secret key
    is the mesh secret s3_secret_key: `meshctl secret set --mesh s3_secret_key`). Without
    NAME: the target now. Backups taken before stay where they are."""
    if name is None:
        spec = asyncio.run(_read_target(context_name))
        settings = " ".join(f"{k}={v}" for k, v in sorted(spec.config.items()))
        console.print(f"Backups are kept in: {spec.name} {settings}".rstrip())
        return
    config: dict[str, Any] = {}
    if name == "s3":
        missing = [
            o
            for o, v in (
                ("--endpoint", endpoint),
                ("--bucket", bucket),
                ("--access-key", access_key),
            )
            if not v
        ]
        if missing:
            raise click.UsageError(f"an s3 target needs {', '.join(missing)}")
        config = {
            "endpoint": endpoint,
            "bucket": bucket,
            "access_key": access_key,
            "region": region,
            "prefix": prefix,
        }
    spec = BackupTargetSpec(name=name, config=config, set_by=who(), set_at=time.time())
    asyncio.run(_write_target(spec, context_name))
    console.print(f"Backups are kept in {name} from the next one on.")


async def _read_target(context_name: str | None) -> BackupTargetSpec:
    store = await connect(load_context(context_name))
    try:
        entry = await store.get(subjects.DESIRED_BUCKET, subjects.BACKUP_TARGET_KEY)
    finally:
        await store.close()
    return (
        decode(entry.value, BackupTargetSpec)
        if entry and entry.value
        else BackupTargetSpec(name="objects")
    )


async def _write_target(spec: BackupTargetSpec, context_name: str | None) -> None:
    store = await connect(load_context(context_name))
    try:
        await store.put(subjects.DESIRED_BUCKET, subjects.BACKUP_TARGET_KEY, encode(spec))
        await store.record("backup_target_set", who(), spec.name, {"target": spec.name})
    finally:
        await store.close()
