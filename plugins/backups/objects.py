"""The `objects` backup target: backups kept in the mesh's own JetStream object store
(`subjects.BACKUPS_STORE`), through the agent's store (`ObjectStore`), never through NATS.

The store can list objects only by name and size, so what `list` must tell without
downloading travels in the object's name: `<key>#<created, ms>#<sha256>` (`#` is not allowed
in keys). The same digest goes into the object's headers too, for a reader with other tools.
A put stores a new object first and only then deletes the older ones of its key, so a failed
put leaves the previous backup in place; should two remain (a crash in between), the newest
one counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from plugins.backups import (
    BackupCorrupt,
    BackupNotFound,
    BackupTargetConfigError,
    BackupTargetContext,
    BackupTargetError,
    ObjectStore,
    StoredBackup,
    TargetFull,
    TargetUnavailable,
    check_config,
    check_key,
    file_sha256,
    scratch_path,
)
from protocol import subjects
from protocol.errors import MeshError

NAME = "objects"
STORE = subjects.BACKUPS_STORE
SEPARATOR = "#"
# What JetStream says when a stream may not grow (the server's storage is exhausted, or the
# object store's maximum bytes are reached); the store passes it on as its error's text.
FULL_MARKERS = ("insufficient resources", "maximum bytes exceeded", "insufficient storage")


@dataclass(frozen=True, slots=True)
class _Object:
    name: str
    backup: StoredBackup


def object_name(key: str, sha256: str, created_ms: int) -> str:
    """The object that holds backup `key`: its name carries what `list` needs."""
    return f"{key}{SEPARATOR}{created_ms}{SEPARATOR}{sha256}"


def parse_name(name: str, size: int) -> _Object | None:
    """The backup an object name describes, or None for an object that is not a backup."""
    parts = name.rsplit(SEPARATOR, 2)
    if len(parts) != 3:
        return None
    key, created, sha256 = parts
    if not (created.isdigit() and len(sha256) == 64 and _is_hex(sha256)) or not key:
        return None
    return _Object(name, StoredBackup(key, size, sha256, int(created) / 1000))


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def _index(names: dict[str, int]) -> dict[str, list[_Object]]:
    """Backup key -> its objects, newest first."""
    found: dict[str, list[_Object]] = {}
    for name, size in names.items():
        if (obj := parse_name(name, size)) is not None:
            found.setdefault(obj.backup.key, []).append(obj)
    for objects in found.values():
        objects.sort(key=lambda o: (o.backup.created_at, o.name), reverse=True)
    return found


def _unavailable(err: BaseException) -> bool:
    # Plugins may not import the agent's store, whose `StoreUnavailable` means "try later".
    return any(cls.__name__ == "StoreUnavailable" for cls in type(err).__mro__)


class ObjectsTarget:
    """Backups in the mesh's object store."""

    name = NAME

    def __init__(self, objects: ObjectStore, logger: logging.Logger) -> None:
        self._objects = objects
        self._log = logger

    async def put(self, key: str, source: Path) -> StoredBackup:
        check_key(NAME, key)
        action = f"store backup {key!r}"
        with self._translated(action):
            sha256, size = await asyncio.to_thread(file_sha256, source)
            created_ms = int(time.time() * 1000)
            name = object_name(key, sha256, created_ms)
            meta = {"backup-key": key, "sha256": sha256}
            stored = await self._objects.put_object(STORE, name, source, meta)
            if stored != size:
                await self._objects.delete_object(STORE, name)
                raise BackupTargetError(
                    action, NAME, f"{source} changed while it was stored ({size} -> {stored} B)"
                )
            for older in _index(await self._objects.object_names(STORE)).get(key, []):
                if older.name != name:
                    await self._objects.delete_object(STORE, older.name)
        self._log.info("Backup stored. target=%s key=%s size=%d sha256=%s", NAME, key, size, sha256)
        return StoredBackup(key, size, sha256, created_ms / 1000)

    async def get(self, key: str, destination: Path) -> StoredBackup:
        check_key(NAME, key)
        action = f"fetch backup {key!r}"
        with self._translated(action):
            found = _index(await self._objects.object_names(STORE)).get(key)
        if not found:
            raise BackupNotFound(action, NAME, key)
        stored = found[0].backup
        scratch = scratch_path(destination)
        try:
            with self._translated(action):
                if not await self._objects.get_object(STORE, found[0].name, scratch):
                    raise BackupNotFound(action, NAME, key)  # deleted meanwhile
                actual, _ = await asyncio.to_thread(file_sha256, scratch)
                if actual != stored.sha256:
                    raise BackupCorrupt(action, NAME, key, stored.sha256, actual)
                await asyncio.to_thread(os.replace, scratch, destination)
        except BaseException:
            await asyncio.to_thread(scratch.unlink, missing_ok=True)
            raise
        self._log.info("Backup fetched. target=%s key=%s size=%d", NAME, key, stored.size)
        return stored

    async def list(self, prefix: str = "") -> list[StoredBackup]:
        with self._translated(f"list backups {prefix!r}"):
            index = _index(await self._objects.object_names(STORE))
        return [objs[0].backup for key, objs in sorted(index.items()) if key.startswith(prefix)]

    async def delete(self, key: str) -> None:
        check_key(NAME, key)
        with self._translated(f"delete backup {key!r}"):
            for obj in _index(await self._objects.object_names(STORE)).get(key, []):
                await self._objects.delete_object(STORE, obj.name)

    async def close(self) -> None:
        """Nothing to release: the store is the agent's."""

    @contextlib.contextmanager
    def _translated(self, action: str) -> Iterator[None]:
        """The store's errors (and local files' `OSError`) as this target's own."""
        try:
            yield
        except BackupTargetError:
            raise
        except (MeshError, OSError) as err:
            text = str(err) or type(err).__name__
            if any(marker in text.lower() for marker in FULL_MARKERS):
                raise TargetFull(action, NAME, text) from err
            if _unavailable(err):
                raise TargetUnavailable(action, NAME, text) from err
            raise BackupTargetError(action, NAME, text) from err


def create(ctx: BackupTargetContext) -> ObjectsTarget:
    check_config(NAME, ctx.config, ())
    if ctx.objects is None:
        raise BackupTargetConfigError(
            NAME, "needs the mesh's object store, which only an agent connected to the mesh has"
        )
    return ObjectsTarget(ctx.objects, ctx.logger)
