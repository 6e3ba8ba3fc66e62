"""The volumes this droplet's datastores and data paths keep their data on (docs/backups.md,
"Volumes"): each is found by its name (`meshd.core.volumes`), made on first use and attached
here before the instance starts. One attached to another droplet is never taken: that one may
still write to it until the recovery leader has fenced it and detached the volume, so the
instance waits (`NotReady`) and is tried again."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from meshd.agent.reconciler.instances import NotReady
from meshd.agent.store import Store
from meshd.core.volumes import DEFAULT_SIZE_GB, volume_name
from plugins.providers import ProviderError, VolumeRecord, Volumes
from plugins.runtimes import builtin_datastore
from protocol.messages import Allocation

log = logging.getLogger(__name__)


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
        self._attached: set[str] = set()
        self._lock = asyncio.Lock()

    def keeps_data(self, allocation: Allocation) -> bool:
        """A built-in datastore here, or a service with a `data_path`."""
        return (
            builtin_datastore(self.runtime, allocation) is not None
            or allocation.data_path is not None
        )

    def name(self, allocation: Allocation) -> str:
        return volume_name(
            self.mesh, self.droplet, allocation.project, allocation.env, allocation.service
        )

    def path(self, allocation: Allocation) -> Path | None:
        """Where the allocation's data is on this droplet (None: it keeps none)."""
        if not self.keeps_data(allocation):
            return None
        return self.provider.mount_path(self.name(allocation))

    async def ensure(self, allocation: Allocation) -> None:
        """The allocation's volume, made if there is none, attached here; `NotReady` while
        another droplet has it."""
        if not self.keeps_data(allocation):
            return
        name = self.name(allocation)
        async with self._lock:
            if name in self._attached:
                return
            try:
                await self._attach(name)
            except ProviderError as err:
                raise NotReady(f"volume {name}: {err.reason}") from None
            self._attached.add(name)

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
