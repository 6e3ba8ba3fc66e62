"""What the process runtime does to the built-in datastores it runs, for the agent: a new
password in place, a dump, a restore and a restore drill into a scratch server (`datastores`,
`dumps`, `scratch`). A part of `ProcessRuntime`, kept apart for its size."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from plugins.runtimes import InstanceSpec, InstanceStartError
from plugins.runtimes.process import datastores, dumps, scratch
from plugins.runtimes.process.datastores import Places, builtin_kind


class BuiltinDatastores:
    """The attributes below are `ProcessRuntime`'s."""

    _root: Path
    _places: Places
    _log: logging.Logger

    def _lock(self, key: str) -> asyncio.Lock:
        raise NotImplementedError  # ProcessRuntime's

    async def change_password(self, spec: InstanceSpec) -> None:
        kind = _builtin(spec)
        async with self._lock(spec.key):
            change = datastores.change_password
            await asyncio.to_thread(change, kind, spec, self._places, self._root / spec.key)
        self._log.info("Password changed. key=%s", spec.key)

    async def dump_datastore(self, spec: InstanceSpec, out: Path) -> None:
        """Write a dump of the running built-in datastore `spec` to the new file `out`."""
        kind = _builtin(spec)
        async with self._lock(spec.key):
            directory = self._root / spec.key
            await asyncio.to_thread(dumps.dump, kind, spec, self._places, directory, out)
        self._log.info("Datastore dumped. key=%s kind=%s", spec.key, kind)

    async def restore_datastore(self, spec: InstanceSpec, source: Path) -> None:
        """Replace the content of the running built-in datastore `spec` with a dump's."""
        kind = _builtin(spec)
        async with self._lock(spec.key):
            directory = self._root / spec.key
            await asyncio.to_thread(dumps.restore, kind, spec, self._places, directory, source)
        self._log.info("Datastore restored. key=%s kind=%s", spec.key, kind)

    async def verify_datastore(self, spec: InstanceSpec, source: Path) -> dict[str, Any]:
        """Load a dump of the built-in datastore `spec` into a scratch one and count what it
        holds (`scratch.verify`); the instance itself is not touched, hence no lock."""
        kind = _builtin(spec)
        found = await asyncio.to_thread(scratch.verify, kind, spec, self._places, source)
        self._log.info(
            "Backup verified. key=%s kind=%s seconds=%.1f", spec.key, kind, found["seconds"]
        )
        return found


def _builtin(spec: InstanceSpec) -> str:
    kind = builtin_kind(spec)
    if kind is None:
        raise InstanceStartError(spec.key, "not a built-in datastore of the process runtime")
    return kind
