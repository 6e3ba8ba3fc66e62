"""The backup target interface: where the mesh keeps its backups, and how it gets them back.

Backups (database dumps, the mesh's state, sealed secrets) are already encrypted files on the
droplet when they reach a target; a target only stores, lists, fetches and deletes them. A
plugin (`objects`: the mesh's own JetStream object store; `s3`: any S3-compatible store such as
DigitalOcean Spaces) implements `BackupTarget`; the `backups` role picks one by name with
`load_target`, which imports the plugin lazily from `TARGETS`.

Every target records the SHA-256 of the bytes it stored and checks it on the way back, so a
backup that rotted or was tampered with is refused (`BackupCorrupt`) instead of restored. The
errors say what is worth trying again: `TargetUnavailable` (no answer) is; `TargetFull`,
`TargetAccessDenied` and a `BackupTargetConfigError` need an operator.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

from protocol.errors import MeshError

TARGETS: dict[str, str] = {
    "objects": "plugins.backups.objects:create",
    "s3": "plugins.backups.s3:create",
}
"""Built-in targets: name -> `module:factory`; the factory takes a `BackupTargetContext`."""

MAX_KEY_LENGTH = 900  # S3 allows 1024 bytes, and an `s3` target may add its prefix
_KEY_PART = re.compile(r"[A-Za-z0-9._+=-]+")
HASH_CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class StoredBackup:
    """One backup as a target keeps it: `key` (`db/shop/prod/database/20261201-2200-<id>
    .dump.enc`), `size` in bytes, `sha256` (hex) of the stored bytes as recorded when it was
    stored (empty: stored by something else, without one), `created_at` a Unix time."""

    key: str
    size: int
    sha256: str
    created_at: float


class BackupTargetError(MeshError):
    """A target could not do what was asked: `action` is what was being done ("store backup
    'db/x.enc'"), `target` the target's name, `reason` what went wrong. Never holds a secret."""

    def __init__(self, action: str, target: str, reason: str) -> None:
        self.action = action
        self.target = target
        self.reason = reason
        super().__init__(f"{action} on backup target {target!r}: {reason}")


class BackupNotFound(BackupTargetError, KeyError):
    """The target holds no backup under `key`."""

    def __init__(self, action: str, target: str, key: str) -> None:
        self.key = key
        super().__init__(action, target, f"no backup with key {key!r}")

    def __str__(self) -> str:  # KeyError would quote the message
        return Exception.__str__(self)


class BackupCorrupt(BackupTargetError):
    """The bytes fetched for `key` are not the ones stored: their SHA-256 is `actual`, the one
    recorded when the backup was stored is `expected` (empty: none was recorded)."""

    def __init__(self, action: str, target: str, key: str, expected: str, actual: str) -> None:
        self.key = key
        self.expected = expected
        self.actual = actual
        recorded = expected or "(none recorded)"
        super().__init__(
            action,
            target,
            f"backup {key!r} is corrupt: sha256 {actual} received, {recorded} recorded",
        )


class TargetFull(BackupTargetError):
    """The target refuses to store more (quota, maximum size, no storage left)."""

    def __init__(self, action: str, target: str, detail: str) -> None:
        self.detail = detail
        super().__init__(action, target, f"the target is full ({detail})")


class TargetUnavailable(BackupTargetError):
    """The target could not be reached or did not answer in time: try again later."""


class TargetAccessDenied(BackupTargetError):
    """The target refused the credentials (a wrong key or secret, or missing rights)."""


class InvalidBackupKey(BackupTargetError, ValueError):
    """A key that targets do not take: `key` is the bad one."""

    def __init__(self, target: str, key: str, reason: str) -> None:
        self.key = key
        super().__init__(f"use key {key!r}", target, reason)


class BackupTargetConfigError(MeshError, ValueError):
    """A target's configuration is wrong: `target` names it, `key` the configuration key (None:
    the configuration as a whole), `reason` what is wrong and what would be right."""

    def __init__(self, target: str, reason: str, key: str | None = None) -> None:
        self.target = target
        self.key = key
        self.reason = reason
        where = f"key {key!r}: " if key else ""
        super().__init__(f"configure backup target {target!r}: {where}{reason}")


class UnknownBackupTarget(BackupTargetConfigError, LookupError):
    """No target has this name; `known` lists the names there are."""

    def __init__(self, target: str, known: list[str]) -> None:
        self.known = known
        super().__init__(target, f"no such backup target; known targets: {', '.join(known)}")


class ObjectStore(Protocol):
    """What the `objects` target needs of the mesh's store (the agent's `Store` has it):
    named files in object stores, streamed in chunks. Failures are `MeshError`s; one that means
    "no answer, try later" has `StoreUnavailable` among its classes' names."""

    async def put_object(
        self, store: str, name: str, path: Path, meta: dict[str, str] | None = None
    ) -> int:
        """Store the file at `path` as object `name` (replacing one of the name); `meta`
        travels as its headers. The number of bytes stored."""
        ...

    async def get_object(self, store: str, name: str, path: Path) -> bool:
        """Write object `name` to `path`; False (and no file at `path`) when there is none."""
        ...

    async def object_names(self, store: str) -> dict[str, int]:
        """Every object of `store`: name -> size in bytes."""
        ...

    async def delete_object(self, store: str, name: str) -> None:
        """Delete object `name`; nothing happens when there is none."""
        ...


def _default_logger() -> logging.Logger:
    return logging.getLogger(__name__)


def _no_secrets(name: str) -> bytes | None:
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class BackupTargetContext:
    """The narrow view of the agent a target gets: its own config section, a lookup of mesh
    secrets by name (`s3_secret_key`), the mesh's object store where there is one, a logger."""

    config: dict[str, Any] = field(default_factory=dict)
    secrets: Callable[[str], bytes | None] = field(default=_no_secrets, repr=False)
    objects: ObjectStore | None = None
    logger: logging.Logger = field(default_factory=_default_logger)


class BackupTarget(Protocol):
    """Stores, lists, fetches and deletes backup files, each under a key."""

    name: str

    async def put(self, key: str, source: Path) -> StoredBackup:
        """Store the file `source` under `key` (replacing a backup of that key), streamed,
        with the SHA-256 of its bytes. `source` must not change meanwhile."""
        ...

    async def get(self, key: str, destination: Path) -> StoredBackup:
        """Write the backup `key` to `destination` once its bytes match the SHA-256 recorded
        by `put`: `BackupNotFound`, `BackupCorrupt` (with both digests). On any failure no
        file is left at `destination` (one that was there before stays untouched)."""
        ...

    async def list(self, prefix: str = "") -> list[StoredBackup]:
        """The backups whose keys start with `prefix`, sorted by key."""
        ...

    async def delete(self, key: str) -> None:
        """Delete the backup `key`; nothing happens when there is none."""
        ...

    async def close(self) -> None:
        """Release connections. Idempotent."""
        ...


def load_target(name: str, ctx: BackupTargetContext) -> BackupTarget:
    """Import the target called `name` and create it; `UnknownBackupTarget` if none is, a
    `BackupTargetConfigError` when its configuration is wrong."""
    target = TARGETS.get(name)
    if target is None:
        raise UnknownBackupTarget(name, sorted(TARGETS))
    module_name, _, attribute = target.partition(":")
    factory = cast(
        Callable[[BackupTargetContext], BackupTarget],
        getattr(importlib.import_module(module_name), attribute),
    )
    return factory(ctx)


def check_key(target: str, key: str) -> str:
    """`key` if targets take it: `/`-separated parts of letters, digits and `._+=-`, none of
    them `.` or `..`; `InvalidBackupKey` otherwise. The `objects` target needs `#` free."""
    if not isinstance(key, str) or not key:
        raise InvalidBackupKey(target, str(key), "a key must be a non-empty string")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidBackupKey(target, key, f"longer than {MAX_KEY_LENGTH} characters")
    for part in key.split("/"):
        if _KEY_PART.fullmatch(part) is None or part in (".", ".."):
            raise InvalidBackupKey(
                target,
                key,
                "must be '/'-separated parts of letters, digits and '._+=-' (no empty, '.' "
                "or '..' part), e.g. 'db/shop/prod/database/20261201-2200-1.dump.enc'",
            )
    return key


def check_config(target: str, config: dict[str, Any], known: tuple[str, ...]) -> None:
    """Refuse configuration keys a target does not know (a typo must not go unnoticed)."""
    unknown = sorted(set(config) - set(known))
    if unknown:
        expected = ", ".join(known) if known else "none"
        raise BackupTargetConfigError(
            target, f"unknown configuration key; known keys: {expected}", unknown[0]
        )


def file_sha256(path: Path) -> tuple[str, int]:
    """The SHA-256 (hex) and size of the file at `path`, read in chunks. Blocking."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as source:
        while chunk := source.read(HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def scratch_path(destination: Path) -> Path:
    """A file of a unique name beside `destination`, where a fetch lands until it is checked
    (so `destination` never holds bytes that were not verified)."""
    token = f"{os.getpid()}.{secrets.token_hex(4)}"
    return destination.with_name(f".{destination.name}.{token}.part")
