"""Backups and restores of the datastores this droplet runs (docs/backups.md), asked by the
`backups` leader: a `BackupRequest` on `mesh.backup.<droplet>` dumps the datastore with the
runtime (`DatastoreDumper`), encrypts the dump to the mesh key before it leaves the droplet
(`meshd.core.backup_crypto`, bound to the backup's key) and stores it in the mesh's backups
store; a `RestoreRequest` on `mesh.restore.<droplet>` fetches a dump the leader staged sealed
to this droplet's own key, opens it and has the runtime load it (a drill: into a scratch
instance that is counted and removed, for `backup verify`). The dump in clear exists only
in a 0700 directory of the agent's, and only while it is being made or loaded. One at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from meshd.agent.asked import Asked
from meshd.agent.meshkey import mesh_public_key
from meshd.agent.reconciler import Reconciler
from meshd.agent.sealkey import DropletKeys
from meshd.agent.store import Received, Store
from meshd.core.backup_crypto import (
    BackupCryptoError,
    EncryptedInfo,
    decrypt_stream,
    encrypt_stream,
)
from meshd.core.sealing import from_text
from plugins.backups import BackupTargetContext, BackupTargetError, load_target
from plugins.fs import scratch_directory
from plugins.runtimes import InstanceSpec, builtin_datastore
from protocol import subjects
from protocol.backups import BackupAnswer, BackupRequest, RestoreRequest
from protocol.codec import decode, encode
from protocol.errors import MeshError, ProtocolError

log = logging.getLogger(__name__)
Answer = BackupAnswer


class Unsupported(MeshError):
    """The datastore is none this droplet's runtime can dump (your own image, Docker's)."""


@runtime_checkable
class DatastoreDumper(Protocol):
    """A runtime that can dump a running built-in datastore and load a dump into one."""

    async def dump_datastore(self, spec: InstanceSpec, out: Path) -> None: ...

    async def restore_datastore(self, spec: InstanceSpec, source: Path) -> None: ...

    async def verify_datastore(self, spec: InstanceSpec, source: Path) -> dict[str, Any]: ...


class DatastoreBackups:
    def __init__(
        self,
        store: Store,
        reconciler: Reconciler,
        droplet: str,
        keys: DropletKeys,
        work: Path,
    ) -> None:
        self.store = store
        self.reconciler = reconciler
        self.droplet = droplet
        self.keys = keys
        self.work = work  # scratch space for dumps, emptied after each
        self._lock = asyncio.Lock()
        self._asked_for = Asked(store)

    async def run(self) -> None:
        droplet = self.droplet
        await self._asked_for.serve(
            {subjects.backup(droplet): self._asked, subjects.restore(droplet): self._asked}
        )

    async def _asked(self, message: Received) -> None:
        self._asked_for.start(self._answer(message), "datastore-backup")

    async def _answer(self, message: Received) -> None:
        started = time.monotonic()
        try:
            if message.subject == subjects.backup(self.droplet):
                backup = decode(message.data, BackupRequest)
                answer = await self._locked(lambda: self.back_up(backup))
            else:
                restore = decode(message.data, RestoreRequest)
                answer = await self._locked(lambda: self.restore(restore))
        except ProtocolError as err:
            answer = Answer(error=f"unreadable request: {err}")
        except Unsupported as err:
            answer = Answer(error=str(err), unsupported=True)
        except (MeshError, LookupError, OSError) as err:
            answer = Answer(error=str(getattr(err, "reason", None) or err))
        except Exception as err:  # a bug: said at once, not left to the leader's timeout
            log.exception("Backup request failed on a bug.")
            answer = Answer(error=f"failed: {err}")
        seconds = round(time.monotonic() - started, 2)
        if answer.error is not None:
            log.warning("Backup request failed. subject=%s error=%s", message.subject, answer.error)
        await message.respond(
            encode(
                Answer(
                    error=answer.error,
                    plain_bytes=answer.plain_bytes,
                    stored_bytes=answer.stored_bytes,
                    seconds=seconds,
                    unsupported=answer.unsupported,
                    counted=answer.counted,
                )
            )  # fmt: skip
        )

    async def _locked(self, work: Callable[[], Awaitable[Answer]]) -> Answer:
        async with self._lock:
            return await work()

    async def back_up(self, request: BackupRequest) -> Answer:
        spec, runtime = self._spec(request.project, request.env, request.service)
        mesh = await mesh_public_key(self.store)
        if mesh is None:
            return Answer(error="the mesh has no key yet to encrypt backups to")
        with self._scratch() as scratch:
            dump, sealed = scratch / "dump", scratch / "sealed"
            await runtime.dump_datastore(spec, dump)
            info = await asyncio.to_thread(
                _encrypt, dump, sealed, from_text(mesh.public, "mesh key"), request.key.encode()
            )
            dump.unlink()  # the clear copy goes as soon as the sealed one exists
            target = load_target("objects", BackupTargetContext(objects=self.store))
            try:
                stored = await target.put(request.key, sealed)
            finally:
                await target.close()
        log.info("Datastore backed up. key=%s bytes=%d", request.key, info.plain_bytes)
        return Answer(plain_bytes=info.plain_bytes, stored_bytes=stored.size)

    async def restore(self, request: RestoreRequest) -> Answer:
        spec, runtime = self._spec(request.project, request.env, request.service)
        with self._scratch() as scratch:
            sealed, dump = scratch / "sealed", scratch / "dump"
            target = load_target("objects", BackupTargetContext(objects=self.store))
            try:
                await target.get(request.staged, sealed)
            except BackupTargetError as err:
                return Answer(error=str(err))
            finally:
                await target.close()
            size = await asyncio.to_thread(self._decrypt, sealed, dump, request.staged.encode())
            if request.drill:  # `backup verify`: the datastore itself is left alone
                counted = await runtime.verify_datastore(spec, dump)
                return Answer(plain_bytes=size, counted=counted)
            await runtime.restore_datastore(spec, dump)
        log.info("Datastore restored. service=%s.%s.%s", request.project, request.env,
                 request.service)  # fmt: skip
        return Answer(plain_bytes=size)

    def _spec(self, project: str, env: str, service: str) -> tuple[InstanceSpec, DatastoreDumper]:
        key = subjects.alloc_key(project, env, service)
        allocation = self.reconciler.allocations.get(key)
        if allocation is None and not self.reconciler.loaded:  # an agent that just started
            raise LookupError(f"{key} is not running on {self.droplet} yet (no allocations read)")
        if allocation is None:
            raise LookupError(f"{key} does not run on {self.droplet}")
        runtime = self.reconciler.runtime
        builtin = builtin_datastore(runtime.name, allocation)
        if not isinstance(runtime, DatastoreDumper) or builtin is None:
            raise Unsupported(f"{key} is no built-in datastore the {runtime.name} runtime dumps")
        return self.reconciler.spec(allocation), runtime

    def _scratch(self) -> contextlib.AbstractContextManager[Path]:
        return scratch_directory(self.work)

    def _decrypt(self, sealed: Path, dump: Path, context: bytes) -> int:
        problem: BackupCryptoError | None = None
        for keys in self.keys.all():  # staged for this droplet's key, or the one before it
            with sealed.open("rb") as source, dump.open("wb") as out:
                try:
                    return decrypt_stream(source, out, keys, context)
                except BackupCryptoError as err:
                    problem = err
        assert problem is not None
        raise problem


def _encrypt(dump: Path, sealed: Path, recipient: bytes, context: bytes) -> EncryptedInfo:
    with dump.open("rb") as source, sealed.open("wb") as out:
        return encrypt_stream(source, out, recipient, context)
