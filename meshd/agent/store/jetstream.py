"""The store on NATS JetStream: the only code in meshd that touches NATS. Every nats error is
translated here (`errors.translated`); every value handed out is the store's own."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    ConsumerConfig,
    KeyValueConfig,
    StorageType,
    StreamConfig,
)
from nats.js.kv import KeyValue

from meshd.agent.store import (
    Conflict,
    Entry,
    Handler,
    Received,
    StoreUnavailable,
    Subscription,
    logs,
)
from meshd.agent.store import WorkQueue as WorkQueueProtocol
from meshd.agent.store.connection import connect_options
from meshd.agent.store.errors import ANY_NATS_ERROR, reason, translated
from meshd.agent.store.events import Events
from meshd.agent.store.moves import StoreMoves
from meshd.agent.store.objects import NatsObjects
from meshd.agent.store.schema import BUCKETS, STREAMS, stream_config
from meshd.agent.store.workqueue import NatsWorkQueue
from meshd.core.trust import ClientTrust
from protocol.logs import LogBatch
from protocol.messages import Event

log = logging.getLogger(__name__)
READY_TIMEOUT_S = 1.0
WORK_ACK_WAIT_S = 60.0


class NatsStore(NatsObjects):
    """A connection to the mesh. Open with `NatsStore.connect`, close with `close()`."""

    def __init__(self, nc: Client, timeout: float) -> None:
        self._nc = nc
        self._js: JetStreamContext = nc.jetstream(timeout=timeout)
        self._timeout = timeout
        self._buckets: dict[str, KeyValue] = {}
        self._events = Events(self._js)
        self._watchers: set[Any] = set()
        self.closing: list[Callable[[], Awaitable[None]]] = []

    @classmethod
    async def connect(
        cls,
        servers: Sequence[str],
        user: str,
        password: str,
        *,
        name: str,
        forever: bool = False,
        timeout: float = 5.0,  # noqa: ASYNC109 - also the JetStream request timeout
        inbox_prefix: str | None = None,
        reconnects: int = 1,
        trust: ClientTrust | None = None,
    ) -> NatsStore:
        options = connect_options(
            servers,
            user,
            password,
            name=name,
            forever=forever,
            reconnects=reconnects,
            inbox_prefix=inbox_prefix,
            trust=trust,
        )
        where = ", ".join(servers)
        try:
            if forever:
                nc = await nats.connect(**options)
            else:
                async with asyncio.timeout(timeout):
                    nc = await nats.connect(**options)
        except TimeoutError:
            raise StoreUnavailable(
                f"connect to {where}: no answer within {timeout:.0f} s"
            ) from None
        except ANY_NATS_ERROR as err:
            raise StoreUnavailable(f"connect to {where}: {reason(err)}") from None
        return cls(nc, timeout)

    @property
    def connected(self) -> bool:
        return bool(self._nc.is_connected)

    async def close(self) -> None:
        await self._events.close()
        if not self._nc.is_closed:
            try:
                await self._nc.drain()
            except ANY_NATS_ERROR:
                await self._nc.close()
        while self.closing:
            await self.closing.pop(0)()

    async def ensure(self, replicas: int) -> None:
        with translated("set up buckets"):
            # A JetStream cluster answers only once it has a meta leader; asking with a short
            # timeout first keeps a starting mesh from waiting out the long one.
            await asyncio.wait_for(self._js.account_info(), READY_TIMEOUT_S)
            for bucket in BUCKETS:
                config = KeyValueConfig(
                    bucket=bucket.name,
                    history=bucket.history,
                    replicas=replicas,
                    storage=StorageType.FILE,
                )
                try:
                    self._buckets[bucket.name] = await self._js.create_key_value(config)
                except nats.js.errors.BadRequestError:  # it exists, maybe with fewer replicas
                    await self._raise_replicas(f"KV_{bucket.name}", replicas)
                    self._buckets[bucket.name] = await self._js.key_value(bucket.name)
            for stream in STREAMS:
                await self._ensure_stream(stream_config(stream, replicas))
            await self._ensure_object_stores(replicas)

    async def _ensure_stream(self, config: StreamConfig) -> None:
        """Added only when missing: adding one that exists counts its size limit against the
        server's storage a second time, and is refused when the two do not fit."""
        assert config.name is not None
        try:
            await self._js.stream_info(config.name)
        except nats.js.errors.NotFoundError:
            try:
                await self._js.add_stream(config)
                return
            except nats.js.errors.BadRequestError:
                pass  # made meanwhile
        await self._raise_replicas(config.name, config.num_replicas or 1)

    async def _raise_replicas(self, stream: str, replicas: int) -> None:
        info = await self._js.stream_info(stream)
        if (info.config.num_replicas or 1) < replicas:
            await self._js.update_stream(info.config.evolve(num_replicas=replicas))
            log.info("Replicas raised. stream=%s replicas=%d", stream, replicas)

    async def _kv(self, bucket: str) -> KeyValue:
        if bucket not in self._buckets:
            try:
                self._buckets[bucket] = await self._js.key_value(bucket)
            except nats.js.errors.BucketNotFoundError:
                raise StoreUnavailable(f"bucket {bucket} does not exist yet") from None
        return self._buckets[bucket]

    # --- KV ----------------------------------------------------------------------------------

    async def get(self, bucket: str, key: str) -> Entry | None:
        with translated(f"read {bucket}/{key}"):
            try:
                entry = await (await self._kv(bucket)).get(key)
            except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
                return None
        if entry.value is None and entry.operation is None:
            return None  # an expiry marker: treat as absent
        return Entry(key, entry.value, entry.revision or 0)

    async def put(self, bucket: str, key: str, value: bytes) -> int:
        with translated(f"write {bucket}/{key}"):
            return int(await (await self._kv(bucket)).put(key, value))

    async def create(self, bucket: str, key: str, value: bytes, *, ttl: float | None = None) -> int:
        with translated(f"create {bucket}/{key}"):
            try:
                return int(await (await self._kv(bucket)).create(key, value, msg_ttl=ttl))
            except nats.js.errors.KeyNotFoundError:
                # The key has a last sequence but no message: it is changing (expiring,
                # deleted) while a stream leader is being elected. Not an answer yet.
                raise StoreUnavailable(f"create {bucket}/{key}: the key is changing") from None

    async def update(
        self, bucket: str, key: str, value: bytes, *, last: int, ttl: float | None = None
    ) -> int:
        # Published to the key's subject: `KeyValue.update` cannot carry a per-message TTL.
        headers = {"Nats-Expected-Last-Subject-Sequence": str(last)}
        with translated(f"update {bucket}/{key} at revision {last}"):
            ack = await self._js.publish(f"$KV.{bucket}.{key}", value, headers=headers, msg_ttl=ttl)
        return int(ack.seq)

    async def delete(self, bucket: str, key: str, *, last: int | None = None) -> None:
        with translated(f"delete {bucket}/{key}"):
            try:
                await (await self._kv(bucket)).delete(key, last=last)
            except nats.js.errors.BadRequestError:  # a wrong `last` (10071)
                if last is None:
                    raise
                raise Conflict(f"delete {bucket}/{key}: changed since revision {last}") from None

    async def entries(self, bucket: str, keys: str = ">") -> dict[str, Entry]:
        result: dict[str, Entry] = {}
        try:
            async with asyncio.timeout(self._timeout):
                async for entry in self.watch(bucket, keys):
                    if entry is None:
                        break
                    if entry.value is None:
                        result.pop(entry.key, None)
                    else:
                        result[entry.key] = entry
        except TimeoutError:
            raise StoreUnavailable(f"list {bucket}: timed out") from None
        return result

    async def watch(self, bucket: str, keys: str = ">") -> AsyncIterator[Entry | None]:
        # nats-py can report "initial values done" before delivering them (its marker races
        # the first messages: nats-io/nats.py#842, a deeper fix in nats-io/nats.py#995), so the
        # marker is ours: it comes with the first entry delivered with nothing pending behind
        # it, or at once when no key matches (a filtered read that trusted nats-py's marker
        # could see no `restart.>` or `config.>` under load, and roll every service).
        with translated(f"watch {bucket}"):
            kv = await self._kv(bucket)
            stored = await self._any_stored(bucket, keys)
            watcher = await kv.watch(keys)  # the consumer needs a JetStream meta leader
        self._watchers.add(watcher)
        initial_done = False
        try:
            with translated(f"watch {bucket}"):
                async for item in watcher:
                    if item is None:
                        if not initial_done and not stored:
                            initial_done = True
                            yield None
                        continue
                    deleted = item.operation in ("DEL", "PURGE")
                    yield Entry(item.key, None if deleted else item.value, item.revision or 0)
                    if not initial_done and not item.delta:
                        initial_done = True
                        yield None
            raise StoreUnavailable(f"watch {bucket}: ended (the JetStream state moved)")
        finally:
            self._watchers.discard(watcher)
            with contextlib.suppress(*ANY_NATS_ERROR):
                await watcher.stop()

    async def _any_stored(self, bucket: str, keys: str) -> bool:
        """Whether a watch of `keys` starts with anything: each matching key's last message
        is delivered, a deletion's too."""
        if keys == ">":
            return bool((await self._js.stream_info(f"KV_{bucket}")).state.messages)
        found = await self._js.stream_info(f"KV_{bucket}", subjects_filter=f"$KV.{bucket}.{keys}")
        return bool(found.state.subjects)

    async def end_watches(self) -> None:
        """End every watch with `StoreUnavailable`, so that each is watched anew: a watch's
        consumer lived on the servers the JetStream state has moved away from."""
        for watcher in list(self._watchers):
            with contextlib.suppress(*ANY_NATS_ERROR):
                await watcher.stop()

    # --- events --------------------------------------------------------------------------

    async def record(
        self,
        name: str,
        actor: str,
        subject: str,
        detail: dict[str, Any] | None = None,
        fence: int | None = None,
        *,
        at: float | None = None,
    ) -> None:
        await self._events.record(name, actor, subject, detail, fence, at=at)

    def record_soon(
        self,
        name: str,
        actor: str,
        subject: str,
        detail: dict[str, Any] | None = None,
        fence: int | None = None,
        *,
        at: float | None = None,
    ) -> None:
        self._events.record_soon(name, actor, subject, detail, fence, at=at)

    async def recent_events(self, count: int) -> list[Event]:
        return await self._events.recent(count)

    def follow_events(self) -> AbstractAsyncContextManager[AsyncIterator[Event]]:
        return self._events.follow()

    async def round_trip(self) -> float:
        with translated("measure the round trip"):
            return float(await self._nc.rtt())

    async def ship_logs(self, subject: str, data: bytes, batch_id: str) -> None:
        await logs.ship(self._js, subject, data, batch_id)

    def read_logs(
        self, subject_filter: str, *, since: float | None, follow: bool
    ) -> AsyncIterator[LogBatch | None]:
        return logs.read(self._js, subject_filter, since=since, follow=follow)

    # --- the JetStream cluster -------------------------------------------------------------

    async def bucket_leader(self, bucket: str) -> str | None:
        return await self.moves().leader(f"KV_{bucket}")

    async def lead_elsewhere(self, bucket: str, server: str) -> str | None:
        return await self.moves().lead_elsewhere(f"KV_{bucket}", server)

    def moves(self) -> StoreMoves:
        return StoreMoves(self._nc, self._timeout)

    async def jetstream_answers(self, wait: float = READY_TIMEOUT_S) -> bool:
        try:
            await asyncio.wait_for(self._js.account_info(), wait)
        except ANY_NATS_ERROR:
            return False
        return True

    # --- work queues -----------------------------------------------------------------------

    async def enqueue(self, subject: str, data: bytes) -> int:
        with translated(f"queue on {subject}"):
            ack = await self._js.publish(subject, data, timeout=self._timeout)
        return int(ack.seq)

    async def work_queue(
        self, stream: str, subject: str, durable: str, ack_wait: float | None = None
    ) -> WorkQueueProtocol:
        config = ConsumerConfig(ack_wait=ack_wait or WORK_ACK_WAIT_S, max_deliver=-1)
        with translated(f"consume {stream}"):
            subscription = await self._js.pull_subscribe(
                subject, durable=durable, stream=stream, config=config
            )
        return NatsWorkQueue(subscription)

    async def queued(self, stream: str) -> int:
        with translated(f"read {stream}"):
            return int((await self._js.stream_info(stream)).state.messages)

    # --- core subjects -----------------------------------------------------------------------

    async def publish(self, subject: str, data: bytes) -> None:
        with contextlib.suppress(*ANY_NATS_ERROR):
            await self._nc.publish(subject, data)

    async def request(self, subject: str, data: bytes, timeout: float) -> bytes | None:  # noqa: ASYNC109
        try:
            reply = await self._nc.request(subject, data, timeout=timeout)
        except ANY_NATS_ERROR:
            return None
        return bytes(reply.data)

    async def subscribe(self, subject: str, handler: Handler) -> Subscription:
        async def deliver(msg: Msg) -> None:
            async def respond(data: bytes) -> None:
                if msg.reply:
                    with contextlib.suppress(*ANY_NATS_ERROR):
                        await msg.respond(data)

            await handler(Received(msg.subject, bytes(msg.data), respond))

        with translated(f"subscribe to {subject}"):
            return CoreSubscription(await self._nc.subscribe(subject, cb=deliver))


class CoreSubscription:
    def __init__(self, subscription: Any) -> None:
        self._subscription = subscription

    async def unsubscribe(self) -> None:
        with contextlib.suppress(*ANY_NATS_ERROR):
            await self._subscription.unsubscribe()
