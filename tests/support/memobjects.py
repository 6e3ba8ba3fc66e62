"""Object stores in memory, with the behaviour of `meshd.agent.store.objects` on JetStream: a
part of `memstore.MemoryStore` (a base class of it). Tests read `objects` and `object_meta`."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING


class MemoryObjects:
    def __init__(self) -> None:
        self.objects: defaultdict[str, dict[str, bytes]] = defaultdict(dict)
        self.object_meta: defaultdict[str, dict[str, dict[str, str]]] = defaultdict(dict)
        self.object_reads: list[tuple[str, str]] = []  # (store, name) of every get_object

    if TYPE_CHECKING:

        def _check(self) -> None: ...

    async def put_object(
        self, store: str, name: str, path: Path, meta: dict[str, str] | None = None
    ) -> int:
        data = await asyncio.to_thread(path.read_bytes)
        self._check()
        self.objects[store][name] = data
        self.object_meta[store][name] = dict(meta or {})
        return len(data)

    async def get_object(self, store: str, name: str, path: Path) -> bool:
        self._check()
        self.object_reads.append((store, name))
        data = self.objects[store].get(name)
        if data is None:
            await asyncio.to_thread(path.unlink, missing_ok=True)
            return False
        await asyncio.to_thread(path.write_bytes, data)
        return True

    async def object_names(self, store: str) -> dict[str, int]:
        self._check()
        return {name: len(data) for name, data in self.objects[store].items()}

    async def delete_object(self, store: str, name: str) -> None:
        self._check()
        self.objects[store].pop(name, None)
        self.object_meta[store].pop(name, None)
