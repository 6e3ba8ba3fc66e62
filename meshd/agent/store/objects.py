"""The object stores of the store on NATS JetStream (`schema.OBJECT_STORES`): files of any size,
kept as chunks of a stream by nats-py's object store. `NatsObjects` is a base class of
`jetstream.NatsStore`; like the rest of it, every nats error is translated here and only
paths, names and sizes go in and out.

What this leans on (measured with nats-py 2.16): `put` reads a file through `readinto` in a
thread and waits for an acknowledgement per chunk; `get` without `writeinto` reassembles an
object in quadratic time (nats.py issue 703), so it always writes into the file; a chunk is as
big as the servers take a message (1 MiB by default), not nats-py's 128 KiB.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from pathlib import Path
from typing import TYPE_CHECKING

import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import ObjectMeta, ObjectMetaOptions, ObjectStoreConfig, StorageType
from nats.js.object_store import ObjectStore

from meshd.agent.store import StoreUnavailable
from meshd.agent.store.errors import ANY_NATS_ERROR, translated
from meshd.agent.store.schema import OBJECT_STORES

CHUNK_BYTES = 1024 * 1024


class NatsObjects:
    """Object stores over the connection of a `NatsStore`."""

    _nc: Client
    _js: JetStreamContext
    _timeout: float

    if TYPE_CHECKING:

        async def _raise_replicas(self, stream: str, replicas: int) -> None: ...

    async def _ensure_object_stores(self, replicas: int) -> None:
        """Create the schema's object stores if missing; raise their replicas to `replicas`
        (in `ensure`, whose block translates errors)."""
        for store in OBJECT_STORES:
            config = ObjectStoreConfig(replicas=replicas, storage=StorageType.FILE)
            try:
                await self._js.create_object_store(store.name, config)
            except nats.js.errors.BadRequestError:  # it exists, maybe with fewer replicas
                await self._raise_replicas(store.stream, replicas)

    async def _object_store(self, store: str) -> ObjectStore:
        try:
            return await self._js.object_store(store)
        except nats.js.errors.BucketNotFoundError:
            raise StoreUnavailable(f"object store {store} does not exist yet") from None

    async def put_object(
        self, store: str, name: str, path: Path, meta: dict[str, str] | None = None
    ) -> int:
        chunk = min(CHUNK_BYTES, self._nc.max_payload or CHUNK_BYTES)
        headers = {key: [value] for key, value in (meta or {}).items()}  # as nats.Header is
        described = ObjectMeta(
            name=name, headers=headers or None, options=ObjectMetaOptions(max_chunk_size=chunk)
        )
        source = await asyncio.to_thread(_reader, path)  # a missing file: OSError
        try:
            with translated(f"store {store}/{name}"):
                info = await (await self._object_store(store)).put(name, source, meta=described)
        finally:
            source.close()
        return int(info.size or 0)

    async def get_object(self, store: str, name: str, path: Path) -> bool:
        target = await asyncio.to_thread(_writer, path)
        found = False
        try:
            with translated(f"fetch {store}/{name}"):
                objects = await self._object_store(store)
                with contextlib.suppress(nats.js.errors.ObjectNotFoundError):
                    await objects.get(name, writeinto=target)
                    found = True
        finally:
            target.close()
            if not found:
                await asyncio.to_thread(path.unlink, missing_ok=True)
        return found

    async def object_names(self, store: str) -> dict[str, int]:
        names: dict[str, int] = {}
        with translated(f"list {store}"):
            watcher = await (await self._object_store(store)).watch(ignore_deletes=True)
            try:
                async with asyncio.timeout(self._timeout):
                    async for info in watcher:
                        if info is None:  # every current object was delivered
                            break
                        if info.deleted:
                            names.pop(info.name, None)
                        else:
                            names[info.name] = int(info.size or 0)
            finally:
                with contextlib.suppress(*ANY_NATS_ERROR):
                    await watcher.stop()
        return names

    async def delete_object(self, store: str, name: str) -> None:
        with translated(f"delete {store}/{name}"):
            objects = await self._object_store(store)
            with contextlib.suppress(nats.js.errors.ObjectNotFoundError):
                await objects.delete(name)


def _reader(path: Path) -> io.BufferedReader:
    return path.open("rb")


def _writer(path: Path) -> io.BufferedWriter:
    return path.open("wb")
