"""What a lost mesh's backups give `meshctl backup restore-mesh` (meshd.cli.restore_mesh):
its mesh key, opened from the escrowed copy in the target (`escrow/mesh-key`) with the
operator's escrow key, and its newest `state` and `secrets` documents, fetched (digests
checked), opened with that key and read. Nothing in clear reaches a disk but a 0700 scratch
directory, removed at once."""

from __future__ import annotations

import asyncio
import io
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from meshd.agent.meshkey import ESCROW
from meshd.agent.state_documents import read_document
from meshd.core.backup_crypto import decrypt_stream
from meshd.core.backup_policy import ESCROW_OBJECT, MESH_PARTS, BackupName
from meshd.core.mesh_restore import newest_documents
from meshd.core.sealing import KeyPair, SealError
from meshd.core.sealing import open_mesh_key as open_escrowed_key
from plugins.backups import (
    BackupNotFound,
    BackupTarget,
    BackupTargetConfigError,
    BackupTargetContext,
    load_target,
)
from protocol import subjects
from protocol.codec import decode
from protocol.errors import MeshError, ProtocolError
from protocol.secrets import MeshKey, SealedSecret


@dataclass(frozen=True, slots=True)
class OldMesh:
    """What the target gave back: the old mesh key, its escrowed entry as stored, the newest
    documents opened (by kind), and every key the target holds."""

    mesh: KeyPair
    escrowed: bytes
    documents: dict[str, tuple[BackupName, dict[str, Any]]]
    keys: list[str]

    def bucket(self, kind: str, bucket: str) -> dict[str, bytes]:
        return dict(self.documents[kind][1]["buckets"].get(bucket) or {})


def open_target(config: dict[str, str], secret: str) -> BackupTarget:
    context = BackupTargetContext(config=config, secrets=lambda _name: secret.encode())
    try:
        return load_target("s3", context)
    except BackupTargetConfigError as err:
        raise click.UsageError(str(err)) from None


async def read_old_mesh(target: BackupTarget, escrow: KeyPair) -> OldMesh:
    """The lost mesh's key and newest documents from `target` (closed afterwards)."""
    scratch = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="meshctl-restore-"))
    try:
        mesh, escrowed = await open_escrowed(target, escrow, scratch)
        keys = [stored.key for stored in await target.list()]
        found = newest_documents(keys)
        for kind in MESH_PARTS:
            if kind not in found:
                raise MeshError(
                    f"the target holds no {kind} document of the lost mesh "
                    f"({kind}/mesh/mesh/{kind}/...): nothing to restore it from"
                )
        documents = {
            kind: (name, await _open_document(target, name, mesh, scratch))
            for kind, name in found.items()
        }
    finally:
        await target.close()
        await asyncio.to_thread(shutil.rmtree, scratch, True)
    old = OldMesh(mesh, escrowed, documents, keys)
    kept = old.bucket("secrets", subjects.SECRETS_BUCKET).get(subjects.MESH_KEY)
    if kept is None or decode(kept, MeshKey).public != mesh.public_text:
        raise MeshError(f"{found['secrets'].key} holds another mesh key than the escrowed one")
    return old


async def open_escrowed(
    target: BackupTarget, escrow: KeyPair, scratch: Path
) -> tuple[KeyPair, bytes]:
    """The lost mesh's key pair, opened from `ESCROW_OBJECT` with the escrow key; and that
    entry as stored. UsageError when the escrow key is not the one it is sealed to."""
    try:
        await target.get(ESCROW_OBJECT, scratch / "escrow")
    except BackupNotFound:
        raise MeshError(
            f"the target holds no escrowed mesh key ({ESCROW_OBJECT}): a mesh stores it with "
            "each backup of its secrets once `meshctl secret export-key` was run there; "
            "without it no backup of the lost mesh opens"
        ) from None
    escrowed = await asyncio.to_thread((scratch / "escrow").read_bytes)
    try:
        sealed = decode(escrowed, SealedSecret)
    except ProtocolError as err:
        raise MeshError(f"{ESCROW_OBJECT} is no escrowed mesh key: {err}") from None
    if sealed.key != escrow.fingerprint:
        raise click.UsageError(
            f"the lost mesh's key is sealed to escrow key {sealed.key}, not to the one given "
            f"({escrow.fingerprint}): give the file `meshctl secret export-key` wrote for that "
            "mesh (its newest, after a --replace)"
        )
    try:
        mesh = open_escrowed_key(escrow, ESCROW, sealed.key, sealed.sealed)
    except SealError as err:
        raise click.UsageError(
            f"the escrowed mesh key does not open with the key given: {err}"
        ) from None
    return mesh, escrowed


async def _open_document(
    target: BackupTarget, name: BackupName, mesh: KeyPair, scratch: Path
) -> dict[str, Any]:
    await target.get(name.key, scratch / name.kind)
    try:
        return await asyncio.to_thread(_decrypted, scratch / name.kind, mesh, name)
    except SealError as err:
        raise MeshError(f"{name.key} does not open with the escrowed mesh key: {err}") from None
    except ValueError as err:
        raise MeshError(f"{name.key}: {err}") from None


def _decrypted(path: Path, mesh: KeyPair, name: BackupName) -> dict[str, Any]:
    plain = io.BytesIO()
    with path.open("rb") as source:
        decrypt_stream(source, plain, mesh, name.key.encode())
    return read_document(plain.getvalue(), name.kind)
