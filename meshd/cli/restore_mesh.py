"""`meshctl backup restore-mesh s3 ...`: a new mesh made from the backups of a lost one
(docs/backups.md "Losing the whole mesh"), run against the new mesh once `meshctl up` made it:

1. the escrowed mesh key (`escrow/mesh-key` in the target), opened with the operator's escrow
   key: the old mesh key pair, which opens every backup of the old mesh;
2. the newest `state` and `secrets` documents, fetched (digests checked) and opened;
3. the new mesh adopts the old mesh key (sealed here to its trusted droplets), takes the old
   values and escrow key and drops its own, then the old state (`meshd.core.mesh_restore`
   says which entries): its `secrets` role seals the values again, its scheduler places;
4. once it converged, each datastore's newest backup is restored by its `backups` leader from
   the restored target, as `meshctl backup restore` does.

Nothing is written to the new mesh before both documents opened; nothing secret is printed,
logged or recorded (the S3 secret key comes from a prompt or stdin, never an argument)."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from meshd.agent.meshkey import holder_entry, seal_keys, trusted_droplets
from meshd.agent.store import Store
from meshd.cli.context import load_context, who
from meshd.cli.escrow import read_escrow_key
from meshd.cli.lost_mesh import OldMesh, open_target, read_old_mesh
from meshd.cli.publish import wait_converged
from meshd.cli.session import connect, read_allocations, read_nodes
from meshd.cli.tables import console
from meshd.core.backup_policy import SCHEDULES, BackupName
from meshd.core.mesh_restore import (
    VALUE_PREFIX,
    age_text,
    datastore_backups,
    desired_entries,
    dropped_secrets,
    escrow_key_entry,
    foreign_values,
    kept_target,
    secret_values,
)
from meshd.core.sealing import KeyPair
from protocol import subjects
from protocol.backups import BackupOrder, BackupOrderAnswer, BackupTargetSpec
from protocol.codec import decode, encode
from protocol.errors import MeshError, ProtocolError

RESTORE_TIMEOUT_S = 1800.0  # one datastore: a safety backup, then the load
LEADER_WAIT_S = 180.0  # until the backups leader sees the restored target


@click.command("restore-mesh", no_args_is_help=True)
@click.argument("target_name", metavar="TARGET", type=click.Choice(["s3"]))
@click.option("--endpoint", required=True, help="The S3 service's URL.")
@click.option("--bucket", required=True, help="The bucket the lost mesh kept its backups in.")
@click.option("--access-key", "access_key", required=True, help="The access key id.")
@click.option("--region", default="us-east-1", show_default=True, help="The region.")
@click.option("--prefix", default="", help="The lost mesh's prefix in the bucket.")
@click.option(
    "--escrow-key",
    "escrow_file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The file `meshctl secret export-key` wrote for the lost mesh.",
)
@click.option("--timeout", default=600.0, show_default=True, help="Seconds to wait to converge.")
@click.option(
    "--force", is_flag=True, help="Restore although this mesh has a published spec of its own."
)
@click.option("--json", "as_json", is_flag=True, help="Print what was restored as one JSON object.")
@click.option("--context", "context_name", metavar="NAME", help="The new mesh.")
def restore_mesh(
    target_name: str,
    endpoint: str,
    bucket: str,
    access_key: str,
    region: str,
    prefix: str,
    escrow_file: Path,
    timeout: float,
    force: bool,
    as_json: bool,
    context_name: str | None,
) -> None:
    """Make this (new) mesh the one whose backups TARGET keeps: its mesh key, secrets,
    published spec, variables and releases, then each datastore's newest backup. Needs the
    escrow key of the lost mesh; the S3 secret key is read from a prompt or stdin."""
    escrow = read_escrow_key(escrow_file)
    secret = _read_secret_key()
    config = {"endpoint": endpoint, "bucket": bucket, "access_key": access_key, "region": region}
    config |= {"prefix": prefix} if prefix else {}
    done = asyncio.run(_restore(config, secret, escrow, force, timeout, as_json, context_name))
    if as_json:
        click.echo(json.dumps(done))
    else:
        _show(done)
    if any(row["error"] for row in done["datastores"]):
        sys.exit(1)


def _read_secret_key() -> str:
    if sys.stdin.isatty():
        secret = getpass.getpass("S3 secret key: ").strip()
    else:
        secret = sys.stdin.readline().strip()
    if not secret:
        raise click.UsageError("the S3 secret key is empty: give it at the prompt or on stdin")
    return secret


async def _restore(
    config: dict[str, str],
    secret: str,
    escrow: KeyPair,
    force: bool,
    wait_s: float,
    quiet: bool,
    context_name: str | None,
) -> dict[str, Any]:
    started = time.monotonic()
    context = load_context(context_name)
    store = await connect(context)
    try:
        publics = await _check_new_mesh(store, context.name, force)
        with _status("Reading the lost mesh's backups ...", quiet):
            old = await read_old_mesh(open_target(config, secret), escrow)
        done = await _adopt(store, old, escrow, publics)
        done |= await _write_state(store, old, config)
        detail = {k: done[k] for k in ("mesh_key", "escrow_key", "spec_revision")}
        detail |= {"state": done["state"]["key"], "secrets": done["secrets"]["key"]}
        await store.record("mesh_restored", who(), "mesh", detail)
        done["datastores"] = []
        if done["spec_revision"] is not None:
            await wait_converged(store, done["spec_revision"], wait_s, quiet, "restore-mesh")
            done["datastores"] = await _restore_datastores(store, old.keys, quiet)
    finally:
        await store.close()
    return done | {"seconds": round(time.monotonic() - started, 1)}


async def _check_new_mesh(store: Store, name: str, force: bool) -> dict[str, bytes]:
    """The keys of the new mesh's trusted droplets, once it may be restored into."""
    spec = await store.get(subjects.DESIRED_BUCKET, subjects.DESIRED_KEY)
    if spec is not None and spec.value and not force:
        raise click.UsageError(
            f"mesh {name!r} already has a published spec; restore-mesh makes a new mesh "
            "from a lost one and would replace its spec, secrets and datastores' data. Run "
            "it against a new mesh (`meshctl up`), or add --force. Nothing was changed."
        )
    nodes = await read_nodes(store)
    trust = await trusted_droplets(store, nodes)
    publics = {d: key for d, key in seal_keys(nodes).items() if d in trust}
    if not publics:
        raise MeshError(
            f"no trusted droplet of mesh {name!r} has reported its key yet (it does within "
            "seconds of `meshctl up`; see `meshctl status`); nothing was changed"
        )
    return publics


async def _adopt(
    store: Store, old: OldMesh, escrow: KeyPair, publics: dict[str, bytes]
) -> dict[str, Any]:
    """The old mesh key, escrow key and values in place of the new mesh's own. In an order
    its `secrets` role follows at every step: the key sealed to its droplets before it is the
    mesh's key, the new mesh's values gone before, the old ones written after."""
    bucket = old.bucket("secrets", subjects.SECRETS_BUCKET)
    values = secret_values(bucket)
    holders = {
        subjects.holder_key(d): encode(holder_entry(old.mesh, d, public, fence=0))
        for d, public in sorted(publics.items())
    }
    own = [k for k in await store.entries(subjects.SECRETS_BUCKET) if k.startswith(VALUE_PREFIX)]
    for key in own:
        await store.delete(subjects.SECRETS_BUCKET, key)
    writes = holders | {subjects.MESH_KEY: bucket[subjects.MESH_KEY]}
    escrow_key = escrow_key_entry(bucket, escrow, who(), time.time())
    writes |= {subjects.ESCROW_KEY: encode(escrow_key), subjects.ESCROWED_MESH_KEY: old.escrowed}
    for key, value in (writes | values).items():
        await store.put(subjects.SECRETS_BUCKET, key, value)
    after = await store.entries(subjects.SECRETS_BUCKET)
    found = {key: entry.value for key, entry in after.items() if entry.value}
    for key in dropped_secrets(found, holders) + foreign_values(found, old.mesh.fingerprint):
        await store.delete(subjects.SECRETS_BUCKET, key)
    name = old.documents["secrets"][0]
    return {
        "mesh_key": old.mesh.fingerprint,
        "escrow_key": escrow.fingerprint,
        "holders": sorted(publics),
        "secrets": {
            "key": name.key,
            "age_s": round(time.time() - name.at, 1),
            "values": len(values),
            "dropped": sorted(set(own) - set(values)),
        },
    }


async def _write_state(store: Store, old: OldMesh, config: dict[str, str]) -> dict[str, Any]:
    """The operator's variables and the release records, then the spec, then the target."""
    desired = old.bucket("state", subjects.DESIRED_BUCKET)
    releases = old.bucket("state", subjects.RELEASES_BUCKET)
    entries = desired_entries(desired)
    spec = entries.pop(subjects.DESIRED_KEY, None)
    for key, value in entries.items():
        await store.put(subjects.DESIRED_BUCKET, key, value)
    for key, value in sorted(releases.items()):
        await store.put(subjects.RELEASES_BUCKET, key, value)
    revision = (
        await store.put(subjects.DESIRED_BUCKET, subjects.DESIRED_KEY, spec) if spec else None
    )
    before = None
    with contextlib.suppress(ProtocolError):
        raw = desired.get(subjects.BACKUP_TARGET_KEY)
        before = decode(raw, BackupTargetSpec) if raw else None
    target = kept_target(before, config, who(), time.time())
    await store.put(subjects.DESIRED_BUCKET, subjects.BACKUP_TARGET_KEY, encode(target))
    name = old.documents["state"][0]
    return {
        "spec_revision": revision,
        "state": {
            "key": name.key,
            "age_s": round(time.time() - name.at, 1),
            "config": len(entries),
            "releases": len(releases),
        },
        "target": {"name": target.name} | dict(target.config),
    }


async def _restore_datastores(store: Store, keys: list[str], quiet: bool) -> list[dict[str, Any]]:
    """Each running datastore's newest backup loaded by the backups leader (after a safety
    backup of what the new mesh has); one row each, with its error if it failed."""
    running = [
        (a.project, a.env, a.service, a.service_kind)
        for a in (await read_allocations(store)).values()
        if a.service_kind in SCHEDULES and a.droplets
    ]
    chosen, without = datastore_backups(keys, running)
    rows = [_row(d, None) for d in without]
    if chosen:
        with _status("Waiting for the backups leader to see the restored target ...", quiet):
            await _leader_sees(store, {name.key for name in chosen})
    for name in chosen:
        order = BackupOrder(action="restore", project=name.project, env=name.env,
                            service=name.service, key=name.key, by=who())  # fmt: skip
        row = _row(name.datastore, name)
        with _status(f"Restoring {name.key} ...", quiet):
            try:
                row["safety"] = (await _ask(store, order, RESTORE_TIMEOUT_S)).safety
            except MeshError as err:
                row["error"] = str(err)
        rows.append(row)
    return sorted(rows, key=lambda r: (r["project"], r["env"], r["service"]))


def _row(datastore: tuple[str, str, str], name: BackupName | None) -> dict[str, Any]:
    project, env, service = datastore
    age = round(time.time() - name.at, 1) if name else None
    return {"project": project, "env": env, "service": service, "key": name and name.key,
            "age_s": age, "safety": None, "error": None}  # fmt: skip


async def _leader_sees(store: Store, keys: set[str]) -> None:
    """Until the backups leader lists `keys` in its target (the restored one, whose secret
    key its `secrets` role seals to it within seconds)."""
    deadline = time.monotonic() + LEADER_WAIT_S
    seen = "no answer yet"
    listing = BackupOrder(action="list", project="", env="", by=who())
    while time.monotonic() < deadline:
        try:
            answer = await _ask(store, listing, 60.0)
            missing = keys - {b.key for b in answer.listed}
            if not missing:
                return
            seen = f"its {answer.target} target lacks {min(missing)}"
        except MeshError as err:
            seen = str(err)
        await asyncio.sleep(2.0)
    raise MeshError(
        f"the backups leader does not see the restored backups within {LEADER_WAIT_S:.0f} s "
        f"({seen}); the mesh's state and secrets are restored: restore its datastores with "
        "`meshctl backup restore` once `meshctl backup list` shows their backups"
    )


async def _ask(store: Store, order: BackupOrder, within_s: float) -> BackupOrderAnswer:
    reply = await store.request(subjects.BACKUP_ORDERS, encode(order), within_s)
    if reply is None:
        raise MeshError("no backups leader answered (`meshctl status` shows who holds it)")
    answer = decode(reply, BackupOrderAnswer)
    if answer.error is not None:
        raise MeshError(f"backup {order.action}: {answer.error}")
    return answer


@contextlib.contextmanager
def _status(text: str, quiet: bool) -> Iterator[None]:
    if quiet:
        yield
        return
    with console.status(text):
        yield


def _show(done: dict[str, Any]) -> None:
    secrets, state, target = done["secrets"], done["state"], done["target"]
    console.print(
        f"Mesh key {done['mesh_key']} adopted (sealed to escrow key {done['escrow_key']}), "
        f"held by {', '.join(done['holders'])}."
    )
    dropped = secrets["dropped"]
    console.print(
        f"Secrets: {secrets['values']} values from {secrets['key']} "
        f"({age_text(secrets['age_s'])} old)"
        + (f"; this mesh's own dropped: {', '.join(dropped)}." if dropped else ".")
    )
    spec = done["spec_revision"]
    console.print(
        f"State from {state['key']} ({age_text(state['age_s'])} old): "
        + (f"spec published as revision {spec}" if spec else "no spec was published")
        + f", {state['config']} variable sets, {state['releases']} release records."
    )
    where = f"{target['bucket']}/{target.get('prefix', '')}".rstrip("/")
    console.print(f"Backups are kept in {target['name']} {where}.")
    for row in done["datastores"]:
        datastore = f"{row['project']} {row['env']} {row['service']}"
        if row["key"] is None:
            console.print(f"{datastore}: no backup; it starts empty.")
        elif row["error"]:
            console.print(f"[red]{datastore}: not restored from {row['key']}[/]: {row['error']}")
        else:
            console.print(
                f"Restored {row['key']} ({age_text(row['age_s'])} old) into {datastore}; "
                f"what it had is in {row['safety']}."
            )
    console.print(f"Took {done['seconds']:.1f} s.")
