"""The messages of backups (docs/backups.md), written as protocol.messages says.

The `backups` leader asks the agent of the droplet that runs a datastore to back it up
(`BackupRequest` on `mesh.backup.<droplet>`): the agent dumps it, encrypts the dump to the
mesh key and stores it under the key asked, then answers (`BackupAnswer`). A restore goes the
other way: the leader opens the backup, seals it again to the droplet's own key, stages it and
asks that droplet's agent (`RestoreRequest` on `mesh.restore.<droplet>`) to load it.
`meshctl backup now|list|restore|verify` ask the leader itself (`BackupOrder` on
`mesh.backups.order`). Where backups are kept is the mesh's `BackupTargetSpec` (KV
`mesh_desired/backup-target`; none: the mesh's own object store).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from protocol.base import Message


@dataclass(frozen=True, slots=True, kw_only=True)
class BackupRequest(Message):
    """Dump the datastore `service` of a project environment, running on the droplet asked,
    encrypt it to the mesh key and store it as `key` in the mesh's backups store."""

    KIND: ClassVar[str] = "backup_request"

    project: str
    env: str
    service: str
    key: str
    fence: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BackupAnswer(Message):
    """How a backup or restore went on the droplet: `error` None when it is done
    (`unsupported`: the datastore is none its runtime can dump, e.g. your own image); the
    sizes of the dump (`plain_bytes`) and of what was stored (`stored_bytes`)."""

    KIND: ClassVar[str] = "backup_answer"

    error: str | None = None
    unsupported: bool = False
    plain_bytes: int = 0
    stored_bytes: int = 0
    seconds: float = 0.0
    counted: dict[str, Any] = field(default_factory=dict)  # a drill's: tables' rows, keys


@dataclass(frozen=True, slots=True, kw_only=True)
class RestoreRequest(Message):
    """Replace the data of the datastore `service` of a project environment, running on the
    droplet asked, by the dump staged as `staged` in the backups store (sealed to this
    droplet's key, bound to `staged`)."""

    KIND: ClassVar[str] = "restore_request"

    project: str
    env: str
    service: str
    staged: str
    fence: int
    drill: bool = False  # `backup verify`: into a scratch instance, counted, removed


@dataclass(frozen=True, slots=True, kw_only=True)
class BackupOrder(Message):
    """An operator's order to the `backups` leader: `action` "now" backs up the datastores
    of a project environment (one `service`, or all); "mesh" the mesh's own state and
    secrets (`project` and `env` empty); "restore" loads backup `key` into the
    datastore `service` of `env` (another environment's backup: `meshctl backup restore
    --into`), after a safety backup of what it replaces."""

    KIND: ClassVar[str] = "backup_order"

    action: str
    project: str
    env: str
    service: str | None = None
    key: str | None = None
    by: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ListedBackup(Message):
    """One backup the target keeps: its key, size in bytes, SHA-256 and when it was stored."""

    KIND: ClassVar[str] = "listed_backup"

    key: str
    size: int
    sha256: str
    created_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedBackup(Message):
    """How `backup verify` found one backup: loaded into a scratch instance (`error` None),
    what it holds (`counted`: rows per table and in all, or Redis keys)."""

    KIND: ClassVar[str] = "verified_backup"

    key: str
    error: str | None = None
    counted: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class BackupOrderAnswer(Message):
    """What the leader did: the backups it took (`taken`, keys), a restore's safety backup
    (`safety`), what the target keeps (`listed`, for "list"; `target` its name), and `error`
    None when all went well."""

    KIND: ClassVar[str] = "backup_order_answer"

    taken: tuple[str, ...] = ()
    listed: tuple[ListedBackup, ...] = ()
    verified: tuple[VerifiedBackup, ...] = ()
    target: str = ""
    safety: str | None = None
    error: str | None = None
    seconds: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class BackupTargetSpec(Message):
    """Where the mesh keeps its backups (`meshctl backup target`): a `BackupTarget` plugin
    by `name` ("objects", "s3") and its settings (never a secret: the S3 secret key is the
    mesh secret `s3_secret_key`)."""

    KIND: ClassVar[str] = "backup_target_spec"

    name: str
    config: dict[str, Any] = field(default_factory=dict)
    set_by: str = ""
    set_at: float = 0.0
