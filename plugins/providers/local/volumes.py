"""Volumes of the local provider: a directory per volume (`Settings.volumes_dir`: as root
under `/var/lib/meshd/<mesh>/volumes`, where PostgreSQL's and Redis's own users reach it) and,
in `account.json`, the droplet it is attached to, changed under the account's lock. So a volume
is attached to one droplet at a time, as at DigitalOcean, and the droplet it names is the only
one whose datastores may use it. Destroying a droplet detaches its volumes.

The directory is the data: it is never inside a droplet's directory (so never in a snapshot),
and a volume made under the name of one whose directory is still there (kept by `meshctl down`)
finds its data again.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import re
import shutil
import time
from pathlib import Path
from typing import Any, TypeVar

from plugins.providers import (
    DropletNotFound,
    Fence,
    ProviderError,
    StaleFence,
    VolumeInUse,
    VolumeNotFound,
    VolumeRecord,
)
from plugins.providers.local.account import Account, AccountStore, Change, DropletState

# DigitalOcean's rule for volume names: lowercase letters, digits and '-', a letter first.
_NAME = re.compile(r"[a-z][a-z0-9-]{0,63}")
T = TypeVar("T")


def record(entry: dict[str, Any]) -> VolumeRecord:
    return VolumeRecord(
        id=entry["id"],
        name=entry["name"],
        size_gb=int(entry["size_gb"]),
        droplet_id=entry.get("droplet_id"),
        created_at=float(entry["created_at"]),
    )


def detach_all(account: Account, droplet_id: str) -> None:
    """A destroyed droplet lets go of its volumes (called under the account's lock)."""
    for entry in account.volumes.values():
        if entry.get("droplet_id") == droplet_id:
            entry["droplet_id"] = None


class LocalVolumes:
    """The `Volumes` ability of the local provider (a mixin over its account)."""

    _account: AccountStore
    _volumes_dir: Path
    _log: logging.Logger

    def mount_path(self, name: str) -> Path:
        return self._volumes_dir / name

    async def mount(self, name: str) -> None:
        return None  # a directory, there since the volume was made

    async def create_volume(self, name: str, size_gb: int, *, fence: Fence | None) -> VolumeRecord:
        action = f"create volume {name!r}"
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ProviderError(action, "a name is lowercase letters, digits and '-', ≤ 64")
        _check_size(action, size_gb)

        def change(account: Account, _: DropletState | None) -> VolumeRecord:
            if any(v["name"] == name for v in account.volumes.values()):
                raise ProviderError(action, "a volume of that name exists")
            volume_id = f"vol-{account.new_id()}"
            self.mount_path(name).mkdir(mode=0o700, parents=True, exist_ok=True)
            account.volumes[volume_id] = {
                "id": volume_id,
                "name": name,
                "size_gb": size_gb,
                "droplet_id": None,
                "created_at": time.time(),
                "fences": {},
            }
            return record(account.volumes[volume_id])

        made = await self._volume_change(change, "create_volume")
        self._log.info("Volume created. id=%s name=%s fence=%s", made.id, name, fence)
        return made

    async def list_volumes(self) -> builtins.list[VolumeRecord]:
        account = await asyncio.to_thread(self._account.read)
        found = account.volumes.values() if account else []
        return sorted((record(v) for v in found), key=lambda r: (r.created_at, r.id))

    async def attach_volume(
        self, volume_id: str, droplet_id: str, *, fence: Fence | None
    ) -> VolumeRecord:
        action = f"attach volume {volume_id} to droplet {droplet_id}"

        def change(account: Account, _: DropletState | None) -> VolumeRecord:
            entry = _fenced(account, action, volume_id, fence)
            if droplet_id not in account.droplets:
                raise DropletNotFound(action, droplet_id)
            holder = entry.get("droplet_id")
            if holder not in (None, droplet_id):
                raise VolumeInUse(action, holder)
            entry["droplet_id"] = droplet_id
            return record(entry)

        attached = await self._volume_change(change, "attach_volume")
        self._log.info("Volume attached. id=%s droplet=%s fence=%s", volume_id, droplet_id, fence)
        return attached

    async def detach_volume(self, volume_id: str, *, fence: Fence | None) -> VolumeRecord:
        action = f"detach volume {volume_id}"

        def change(account: Account, _: DropletState | None) -> VolumeRecord:
            entry = _fenced(account, action, volume_id, fence)
            entry["droplet_id"] = None
            return record(entry)

        detached = await self._volume_change(change, "detach_volume")
        self._log.info("Volume detached. id=%s fence=%s", volume_id, fence)
        return detached

    async def resize_volume(
        self, volume_id: str, size_gb: int, *, fence: Fence | None
    ) -> VolumeRecord:
        action = f"resize volume {volume_id} to {size_gb} GB"
        _check_size(action, size_gb)

        def change(account: Account, _: DropletState | None) -> VolumeRecord:
            entry = _fenced(account, action, volume_id, fence)
            if size_gb < int(entry["size_gb"]):
                raise ProviderError(action, f"volumes never shrink (it has {entry['size_gb']} GB)")
            entry["size_gb"] = size_gb
            return record(entry)

        return await self._volume_change(change, "resize_volume")

    async def delete_volume(self, volume_id: str, *, fence: Fence | None) -> None:
        action = f"delete volume {volume_id}"

        def change(account: Account, _: DropletState | None) -> None:
            entry = _fenced(account, action, volume_id, fence)
            if entry.get("droplet_id") is not None:
                raise VolumeInUse(action, entry["droplet_id"])
            shutil.rmtree(self.mount_path(entry["name"]), ignore_errors=True)
            del account.volumes[volume_id]

        await self._volume_change(change, "delete_volume")
        self._log.info("Volume deleted. id=%s fence=%s", volume_id, fence)

    async def _volume_change(self, change: Change[T], kind: str) -> T:
        return await asyncio.to_thread(self._account.transact, change, kind, None, None)


def _fenced(account: Account, action: str, volume_id: str, fence: Fence | None) -> dict[str, Any]:
    """The volume acted on, after refusing a fence older than one its role showed before."""
    entry = account.volumes.get(volume_id)
    if entry is None:
        raise VolumeNotFound(action, volume_id)
    if fence is not None:
        fences = entry.setdefault("fences", {})
        seen = fences.get(fence.role)
        if seen is not None and fence.revision < seen:
            raise StaleFence(action, fence, seen)
        fences[fence.role] = fence.revision
    return entry


def _check_size(action: str, size_gb: int) -> None:
    if not isinstance(size_gb, int) or isinstance(size_gb, bool) or not 1 <= size_gb <= 16384:
        raise ProviderError(action, "a size is a whole number of GB from 1 to 16384")
