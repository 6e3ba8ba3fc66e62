"""Where the `backups` leader keeps backups: the target the operator chose (`meshctl backup
target`: KV `mesh_desired/backup-target`; none: the mesh's own object store), and the mesh's
object store as the staging area where agents put what they dump and the leader puts what a
droplet is to load. A backup taken to another target is moved there from staging. Beside the
`secrets` documents the kept target also holds the escrowed mesh key (`ESCROW_OBJECT`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from meshd.agent.store import Store
from meshd.core.backup_policy import ESCROW_OBJECT
from plugins.backups import BackupTarget, BackupTargetContext, StoredBackup, load_target
from protocol import subjects
from protocol.backups import BackupTargetSpec
from protocol.codec import decode

log = logging.getLogger(__name__)
DEFAULT = BackupTargetSpec(name="objects")


class Targets:
    def __init__(self, store: Store, secrets: Callable[[str], bytes | None]) -> None:
        self.store = store
        self.secrets = secrets  # mesh secrets by name (`s3_secret_key`)
        self.staging = load_target("objects", BackupTargetContext(objects=store))
        self._kept: BackupTarget | None = None
        self._spec: BackupTargetSpec | None = None

    async def kept(self) -> BackupTarget:
        """The target as configured now (loaded again when the configuration changed)."""
        entry = await self.store.get(subjects.DESIRED_BUCKET, subjects.BACKUP_TARGET_KEY)
        spec = decode(entry.value, BackupTargetSpec) if entry and entry.value else DEFAULT
        if self._kept is None or spec != self._spec:
            if self._kept is not None and self._kept is not self.staging:
                await self._kept.close()
            self._kept = (
                self.staging
                if spec.name == "objects"
                else load_target(
                    spec.name,
                    BackupTargetContext(
                        config=dict(spec.config), secrets=self.secrets, objects=self.store
                    ),
                )
            )
            self._spec = spec
            log.info("Backups are kept in the %s target.", spec.name)
        return self._kept

    async def settle(self, key: str, scratch: Path) -> StoredBackup | None:
        """Move backup `key` from staging to the kept target, if that is another; what was
        stored there (None: staging is the target). Staging keeps it until it is stored."""
        kept = await self.kept()
        if kept is self.staging:
            return None
        await self.staging.get(key, scratch / "moving")
        stored = await kept.put(key, scratch / "moving")
        await self.staging.delete(key)
        return stored

    async def keep_escrow(self, scratch: Path) -> bool:
        """Store the mesh key as sealed to the operator's escrow key (`escrowed-mesh-key`,
        safe in clear: only the escrow key's private half opens it) in the kept target as
        `ESCROW_OBJECT`, over the one there: every backup is encrypted to the mesh key, so
        after the whole mesh is lost this is what opens them. False: no escrow key yet."""
        entry = await self.store.get(subjects.SECRETS_BUCKET, subjects.ESCROWED_MESH_KEY)
        if entry is None or not entry.value:
            return False
        await asyncio.to_thread((scratch / "escrow").write_bytes, entry.value)
        await (await self.kept()).put(ESCROW_OBJECT, scratch / "escrow")
        return True

    async def close(self) -> None:
        if self._kept is not None and self._kept is not self.staging:
            await self._kept.close()
        await self.staging.close()
