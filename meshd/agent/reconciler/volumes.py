"""The volume this droplet's datastores and data paths keep their data on (docs/backups.md,
"Volumes"): one per logical droplet, found by its name (`meshd.core.volumes`), made on first
use, attached and mounted here before an instance that keeps data starts, with a directory
per project, environment and service. One attached to another droplet is never taken: that
one may still write to it until the recovery leader has fenced it and detached the volume, so
the instance waits (`NotReady`) and is tried again."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

from meshd.agent.reconciler.instances import NotReady
from meshd.agent.store import Store
from meshd.core.volumes import DEFAULT_SIZE_GB, data_directory, volume_name
from plugins.providers import ProviderError, VolumeRecord, Volumes
from plugins.runtimes import builtin_datastore
from protocol.messages import Allocation

log = logging.getLogger(__name__)

PASSABLE = 0o711  # the datastores' users pass through to their own directory, never list


class DropletVolumes:
    def __init__(
        self,
        provider: Volumes,
        mesh: str,
        droplet: str,
        droplet_id: str,
        runtime: str,
        store: Callable[[], Store | None],
    ) -> None:
        self.provider = provider
        self.mesh = mesh
        self.droplet = droplet
        self.droplet_id = droplet_id
        self.runtime = runtime
        self.store = store  # for the events; None until the agent reaches JetStream
        self._attached = False
        self._prepared: set[Path] = set()  # directories made passable since the volume was mounted
        self._lock = asyncio.Lock()

    def keeps_data(self, allocation: Allocation) -> bool:
        """A built-in datastore here, or a service with a `data_path`."""
        return (
            builtin_datastore(self.runtime, allocation) is not None
            or allocation.data_path is not None
        )

    @property
    def name(self) -> str:
        return volume_name(self.mesh, self.droplet)

    def path(self, allocation: Allocation) -> Path | None:
        """Where the allocation's data is on this droplet (None: it keeps none)."""
        if not self.keeps_data(allocation):
            return None
        directory = data_directory(allocation.project, allocation.env, allocation.service)
        return self.provider.mount_path(self.name) / directory

    async def ensure(self, allocation: Allocation) -> None:
        """The droplet's volume, made if there is none, attached and mounted here, and the
        allocation's directory on it; `NotReady` while another droplet has the volume."""
        path = self.path(allocation)
        if path is None:
            return
        async with self._lock:
            if not self._attached:
                try:
                    await self._attach(self.name)
                    await self.provider.mount(self.name)
                except ProviderError as err:
                    raise NotReady(f"volume {self.name}: {err.reason}") from None
                self._attached = True
        if path not in self._prepared:  # once, not at every start of the instance
            await asyncio.to_thread(_passable, self.provider.mount_path(self.name), path)
            self._prepared.add(path)

    async def _attach(self, name: str) -> None:
        volume = await self._find(name)
        if volume is None:
            volume = await self.provider.create_volume(name, DEFAULT_SIZE_GB, fence=None)
            await self._record("volume_created", name, volume)
        if volume.droplet_id not in (None, self.droplet_id):
            raise NotReady(
                f"volume {name} is attached to droplet {volume.droplet_id}; waiting for its "
                "recovery to detach it"
            )
        if volume.droplet_id is None:
            volume = await self.provider.attach_volume(volume.id, self.droplet_id, fence=None)
            await self._record("volume_attached", name, volume)

    async def _find(self, name: str) -> VolumeRecord | None:
        return next((v for v in await self.provider.list_volumes() if v.name == name), None)

    async def _record(self, event: str, name: str, volume: VolumeRecord) -> None:
        log.info("Volume ready. event=%s volume=%s id=%s", event, name, volume.id)
        store = self.store()
        if store is not None:
            detail = {"volume": volume.id, "droplet_id": volume.droplet_id}
            await store.record(event, self.droplet, name, detail)


def _passable(top: Path, directory: Path) -> None:
    """`directory` on the volume mounted at `top`, it and every directory from `top` down to
    it passable by the datastores' own users (a new filesystem's root is root's alone)."""
    directory.mkdir(parents=True, exist_ok=True)
    here = top
    for part in ("", *directory.relative_to(top).parts):
        here = here / part
        if here.stat().st_mode & 0o777 != PASSABLE:
            os.chmod(here, PASSABLE)
