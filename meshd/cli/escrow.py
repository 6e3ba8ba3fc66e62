"""`meshctl secret export-key`: the operator's escrow key. Made here, on the operator's
machine: its public half goes to the mesh, whose `secrets` role seals the mesh key to it; its
private half is handed out once (printed, or written 0600) and never stored in the mesh. With
it and a copy of `mesh_secrets`, every value opens after the whole mesh is lost
(docs/secrets.md "Escrow")."""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from meshd.agent.store import Conflict, Store
from meshd.cli.context import load_context, who
from meshd.cli.session import connect
from meshd.cli.tables import console
from meshd.core.sealing import KeyPair, SealError, from_text, to_text
from protocol import subjects
from protocol.codec import decode, encode
from protocol.errors import MeshError
from protocol.secrets import MeshKey, SealedSecret

ESCROWED_WAIT_S = 30.0
FORMAT = "meshd-escrow-key/1"


@click.command("export-key")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the private key to this new file (0600) instead of printing it.",
)
@click.option(
    "--replace",
    is_flag=True,
    help="Make a new escrow key although one was handed out; the mesh key is then sealed to "
    "the new one only (keep the old one for older backups).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@click.option("--context", "context_name", metavar="NAME", help="Mesh to talk to.")
def export_key(out: Path | None, replace: bool, as_json: bool, context_name: str | None) -> None:
    """Hand out, once, the private half of the escrow key that the mesh key is sealed to:
    keep it offline. With it, the sealed secrets (and later the encrypted backups) can be
    opened after the whole mesh is lost. The mesh never stores it."""
    if out is not None and out.exists():
        raise click.UsageError(f"{out} exists; give a new file (nothing is overwritten)")
    asyncio.run(_export(out, replace, as_json, context_name))


async def _export(out: Path | None, replace: bool, as_json: bool, context_name: str | None) -> None:
    context = load_context(context_name)
    pair = KeyPair.new()
    document = {
        "format": FORMAT,
        "mesh": context.mesh,
        "fingerprint": pair.fingerprint,
        "private": to_text(pair.private),
    }
    store = await connect(context)
    try:
        entry = await store.get(subjects.SECRETS_BUCKET, subjects.ESCROW_KEY)
        if entry is not None and entry.value is not None and not replace:
            old = decode(entry.value, MeshKey)
            when = datetime.fromtimestamp(old.created_at).strftime("%Y-%m-%d %H:%M")
            raise click.UsageError(
                f"the escrow key {old.fingerprint} was handed out on {when} by {old.created_by}; "
                "it is given once. --replace makes a new one (keep the old one for old backups)"
            )
        if out is not None:
            _write_private(out, document)  # before the mesh uses it: never a key nobody has
        try:
            await _publish(store, pair, entry.revision if entry and entry.value else None)
        except BaseException:
            if out is not None:
                os.unlink(out)
            raise
        if out is None and not as_json:
            click.echo(json.dumps(document))  # at once: the key is in use from now on
        detail = {"fingerprint": pair.fingerprint}
        await store.record("escrow_key_exported", who(), "secrets", detail)
        escrowed = await _wait_escrowed(store, pair.fingerprint)
    finally:
        await store.close()
    result: dict[str, Any] = {
        "fingerprint": pair.fingerprint,
        "escrowed": escrowed,
        "written_to": str(out) if out else None,
    }
    if as_json:
        click.echo(json.dumps(result | ({} if out else {"key": document}), indent=2))
        return
    if out is None:
        console.print("Keep the line above offline; it is not shown again.")
    else:
        console.print(f"Private half written to {out} (0600); keep it offline.")
    if escrowed:
        console.print(f"Escrow key {pair.fingerprint}: the mesh key is sealed to it.")
    else:
        console.print(
            f"[yellow]The mesh key is not sealed to {pair.fingerprint} yet[/] (the `secrets` "
            "role does it within seconds when it runs; see `meshctl status`)."
        )


def read_escrow_key(path: Path) -> KeyPair:
    """The escrow key pair from the file `export-key` wrote (or its printed line, saved);
    UsageError saying what is wrong with it."""
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise click.UsageError(f"cannot read the escrow key {path}: {err}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise click.UsageError(
            f"{path} is not an escrow key (`meshctl secret export-key` writes one: {FORMAT})"
        )
    try:
        pair = KeyPair.from_private(from_text(str(document.get("private", "")), "key"))
    except SealError:
        raise click.UsageError(f"{path}: its private key is damaged") from None
    if document.get("fingerprint") not in (None, pair.fingerprint):
        raise click.UsageError(f"{path}: its private key is not the one its fingerprint names")
    return pair


def _write_private(out: Path, document: dict[str, str]) -> None:
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(json.dumps(document) + "\n")


async def _publish(store: Store, pair: KeyPair, last: int | None) -> None:
    escrow = MeshKey(
        public=pair.public_text,
        fingerprint=pair.fingerprint,
        created_by=who(),
        created_at=time.time(),
    )
    try:
        if last is None:
            await store.create(subjects.SECRETS_BUCKET, subjects.ESCROW_KEY, encode(escrow))
        else:
            await store.update(
                subjects.SECRETS_BUCKET, subjects.ESCROW_KEY, encode(escrow), last=last
            )
    except Conflict:
        raise MeshError("another escrow key was handed out meanwhile; nothing changed") from None


async def _wait_escrowed(store: Store, fingerprint: str) -> bool:
    deadline = time.monotonic() + ESCROWED_WAIT_S
    with console.status("Sealing the mesh key to the escrow key ..."):
        while time.monotonic() < deadline:
            entry = await store.get(subjects.SECRETS_BUCKET, subjects.ESCROWED_MESH_KEY)
            if entry and entry.value and decode(entry.value, SealedSecret).key == fingerprint:
                return True
            await asyncio.sleep(0.3)
    return False
