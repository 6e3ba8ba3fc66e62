"""What outlives a droplet on DigitalOcean: its snapshots (found in the account by name,
since a snapshot outlives the droplet it was taken of), rebuilds from them (same id and
address), and block storage volumes (mounted at `/mnt/<name>` on the droplet that has them).
A mixin over the provider's `Api` and `Pace`."""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from plugins.providers import (
    DropletNotFound,
    DropletRecord,
    Fence,
    ProviderError,
    SnapshotNotFound,
    SnapshotRecord,
    VolumeInUse,
    VolumeNotFound,
    VolumeRecord,
)
from plugins.providers.digitalocean import droplets
from plugins.providers.digitalocean.actions import Pace, act, start_and_settle
from plugins.providers.digitalocean.api import Api, Refused, as_json
from plugins.providers.digitalocean.fencing import Fenced, snapshot_resource, volume_resource

VOLUME_NAME = re.compile(r"[a-z][a-z0-9-]{0,63}")
MOUNTS = Path("/mnt")
DEVICES = Path("/dev/disk/by-id")  # where an attached volume appears


def _time(stamp: str | None) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if stamp else 0.0


def snapshot_record(snapshot: dict[str, Any]) -> SnapshotRecord:
    return SnapshotRecord(
        id=str(snapshot["id"]),
        name=str(snapshot["name"]),
        droplet_id=str(snapshot.get("resource_id") or ""),
        created_at=_time(snapshot.get("created_at")),
        size_gb=float(snapshot.get("size_gigabytes") or 0.0),
    )


def volume_record(volume: dict[str, Any]) -> VolumeRecord:
    holders = volume.get("droplet_ids") or []
    return VolumeRecord(
        id=str(volume["id"]),
        name=str(volume["name"]),
        size_gb=int(volume["size_gigabytes"]),
        droplet_id=str(holders[0]) if holders else None,
        created_at=_time(volume.get("created_at")),
    )


class DigitalOceanStorage(Fenced):
    """Snapshots, rebuilds and volumes of the `digitalocean` provider."""

    _api: Api
    _pace: Pace
    _log: logging.Logger
    _settings: dict[str, Any]

    # --- snapshots ------------------------------------------------------------------------

    async def snapshot(self, droplet_id: str, name: str, *, fence: Fence | None) -> SnapshotRecord:
        what = f"snapshot droplet {droplet_id}"
        await self._admit(droplet_id, fence, what)
        await act(self._api, _number(droplet_id, what), {"type": "snapshot", "name": name},
                  what, self._pace)  # fmt: skip
        taken = [s for s in await self.list_snapshots() if s.name == name]
        if not taken:
            raise ProviderError(what, f"the snapshot {name!r} is not in the account")
        newest = max(taken, key=lambda s: s.created_at)
        self._log.info("Droplet snapshotted. id=%s snapshot=%s fence=%s", droplet_id, newest.id,
                       fence)  # fmt: skip
        return newest

    async def list_snapshots(self) -> list[SnapshotRecord]:
        found = await self._api.every(
            "list snapshots", self._api.do.snapshots.list, "snapshots", resource_type="droplet"
        )
        return [snapshot_record(s) for s in found]

    async def delete_snapshot(self, snapshot_id: str, *, fence: Fence | None) -> None:
        what = f"delete snapshot {snapshot_id}"
        await self._admit(snapshot_resource(snapshot_id), fence, what)
        answer = await self._api.read(  # a delete of a snapshot is safe to send again
            what, lambda **kw: self._api.do.snapshots.delete(as_json(snapshot_id), **kw)
        )
        if isinstance(answer, dict) and answer.get("id") == "not_found":
            raise SnapshotNotFound(what, snapshot_id)
        self._log.info("Snapshot deleted. id=%s fence=%s", snapshot_id, fence)

    async def rebuild(
        self,
        droplet_id: str,
        *,
        fence: Fence | None,
        snapshot_id: str | None = None,
        user_data: str | None = None,
    ) -> DropletRecord:
        """DigitalOcean rebuilds in place: same id, address and user data (its user data cannot
        change; a bootstrap over SSH writes what the droplet needs)."""
        what = f"rebuild droplet {droplet_id}"
        number = _number(droplet_id, what)
        await self._admit(droplet_id, fence, what)
        image: int | str = self._settings["image"]
        if snapshot_id is not None:
            if snapshot_id not in {s.id for s in await self.list_snapshots()}:
                raise SnapshotNotFound(what, snapshot_id)
            image = int(snapshot_id)
        try:
            await act(self._api, number, {"type": "rebuild", "image": image}, what, self._pace)
        except Refused as err:
            if err.status == 404:
                raise DropletNotFound(what, droplet_id) from None
            raise
        built = droplets.record(await droplets.fetch(self._api, number, what))
        self._log.info("Droplet rebuilt. id=%s from=%s fence=%s", droplet_id,
                       snapshot_id or image, fence)  # fmt: skip
        return built

    # --- volumes --------------------------------------------------------------------------

    def mount_path(self, name: str) -> Path:
        return MOUNTS / name

    async def mount(self, name: str) -> None:
        """Mount the attached volume (made with ext4 on it) at `/mnt/<name>`, as DigitalOcean
        documents; the agent calls it on every start, so no fstab entry is needed. Where no
        such device is (the stand-in binds the volume's directory there itself) it is done."""
        device = DEVICES / f"scsi-0DO_Volume_{name}"
        target = self.mount_path(name)
        if not device.exists() or target.is_mount():
            return
        target.mkdir(parents=True, exist_ok=True)
        mounting = await asyncio.create_subprocess_exec(
            "mount", "-o", "defaults,discard,noatime", str(device), str(target),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, error = await mounting.communicate()
        if mounting.returncode:
            raise ProviderError(f"mount volume {name!r}", error.decode(errors="replace").strip())
        self._log.info("Volume mounted. name=%s at=%s", name, target)

    async def create_volume(self, name: str, size_gb: int, *, fence: Fence | None) -> VolumeRecord:
        what = f"create volume {name!r}"
        if not VOLUME_NAME.fullmatch(name):
            raise ProviderError(what, "a name is lowercase letters, digits and '-', ≤ 64")
        if any(v.name == name for v in await self.list_volumes()):
            raise ProviderError(what, f"a volume called {name!r} exists already")
        body = {"name": name, "size_gigabytes": size_gb, "region": self._settings["region"],
                "filesystem_type": "ext4", "description": "meshd"}  # fmt: skip
        answer = await self._api.change(what, lambda **kw: self._api.do.volumes.create(body, **kw))
        made = volume_record(answer["volume"])
        self._log.info("Volume created. id=%s name=%s fence=%s", made.id, name, fence)
        return made

    async def list_volumes(self) -> list[VolumeRecord]:
        found = await self._api.every(
            "list volumes", self._api.do.volumes.list, "volumes", region=self._settings["region"]
        )
        return [volume_record(v) for v in found]

    async def _volume(self, volume_id: str, what: str) -> VolumeRecord:
        answer = await self._api.read(what, lambda **kw: self._api.do.volumes.get(volume_id, **kw))
        if "volume" not in answer:
            raise VolumeNotFound(what, volume_id)
        return volume_record(answer["volume"])

    async def attach_volume(
        self, volume_id: str, droplet_id: str, *, fence: Fence | None
    ) -> VolumeRecord:
        what = f"attach volume {volume_id} to droplet {droplet_id}"
        await self._admit(volume_resource(volume_id), fence, what)
        current = await self._volume(volume_id, what)
        if current.droplet_id == droplet_id:
            return current
        if current.droplet_id is not None:
            raise VolumeInUse(what, current.droplet_id)
        body = {"type": "attach", "droplet_id": _number(droplet_id, what),
                "region": self._settings["region"]}  # fmt: skip
        await self._volume_action(volume_id, body, what)
        self._log.info("Volume attached. id=%s droplet=%s fence=%s", volume_id, droplet_id, fence)
        return await self._volume(volume_id, what)

    async def detach_volume(self, volume_id: str, *, fence: Fence | None) -> VolumeRecord:
        what = f"detach volume {volume_id}"
        await self._admit(volume_resource(volume_id), fence, what)
        current = await self._volume(volume_id, what)
        if current.droplet_id is None:
            return current
        body = {"type": "detach", "droplet_id": int(current.droplet_id),
                "region": self._settings["region"]}  # fmt: skip
        await self._volume_action(volume_id, body, what)
        self._log.info("Volume detached. id=%s fence=%s", volume_id, fence)
        return await self._volume(volume_id, what)

    async def resize_volume(
        self, volume_id: str, size_gb: int, *, fence: Fence | None
    ) -> VolumeRecord:
        what = f"resize volume {volume_id} to {size_gb} GB"
        await self._admit(volume_resource(volume_id), fence, what)
        current = await self._volume(volume_id, what)
        if size_gb < current.size_gb:
            raise ProviderError(what, f"volumes only grow (it has {current.size_gb} GB)")
        if size_gb > current.size_gb:
            body = {"type": "resize", "size_gigabytes": size_gb,
                    "region": self._settings["region"]}  # fmt: skip
            await self._volume_action(volume_id, body, what)
        return await self._volume(volume_id, what)

    async def delete_volume(self, volume_id: str, *, fence: Fence | None) -> None:
        what = f"delete volume {volume_id}"
        await self._admit(volume_resource(volume_id), fence, what)
        current = await self._volume(volume_id, what)
        if current.droplet_id is not None:
            raise VolumeInUse(what, current.droplet_id)
        answer = await self._api.read(  # safe to send again: a second one finds it gone
            what, lambda **kw: self._api.do.volumes.delete(volume_id, **kw)
        )
        if isinstance(answer, dict) and answer.get("id") == "not_found":
            raise VolumeNotFound(what, volume_id)
        self._log.info("Volume deleted. id=%s fence=%s", volume_id, fence)

    async def _volume_action(self, volume_id: str, body: dict[str, Any], what: str) -> None:
        await start_and_settle(
            self._api,
            lambda **kw: self._api.do.volume_actions.post_by_id(volume_id, body, **kw),
            what,
            self._pace,
        )


def _number(droplet_id: str, what: str) -> int:
    if not droplet_id.isdigit():
        raise DropletNotFound(what, droplet_id)
    return int(droplet_id)
