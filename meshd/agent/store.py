"""The only module that touches NATS: KV buckets, the event and deploy streams, core subjects.

Everything above it speaks in keys, bytes and `protocol` messages; NATS errors become
`Conflict` (a compare-and-set lost) or `StoreUnavailable` (no quorum, no server, timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.kv import KeyValue

from protocol import subjects
from protocol.codec import decode, encode
from protocol.errors import MeshError
from protocol.messages import Event

log = logging.getLogger(__name__)

BUCKET_HISTORY = {subjects.DESIRED_BUCKET: 20}
EVENTS_MAX_AGE_S = 30 * 24 * 3600
EVENTS_MAX_BYTES = 64 * 2**20
EVENT_ATTEMPTS = 3
READY_TIMEOUT_S = 1.0


class StoreUnavailable(MeshError):
    """The mesh's NATS servers could not be reached or JetStream did not answer."""


class Conflict(MeshError):
    """A compare-and-set write lost: somebody else wrote first."""


@dataclass(frozen=True, slots=True)
class Entry:
    key: str
    value: bytes | None  # None: deleted or expired
    revision: int


RECORDING_GRACE_S = 2.0
WORK_ACK_WAIT_S = 60.0
BACKGROUND_ATTEMPTS = 9  # `record_soon`: waits 0.5 + 1 + 2 + 4 + 8 * 4 s, about 40 s
EVENT_RETRY_MAX_S = 8.0
_UNAVAILABLE = (
    nats.errors.TimeoutError,
    nats.errors.NoServersError,
    nats.errors.ConnectionClosedError,
    nats.errors.NoRespondersError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.NoStreamResponseError,
    asyncio.TimeoutError,
    OSError,
)


class Store:
    """A connection to the mesh. Open with `Store.connect`, close with `close()`."""

    def __init__(self, nc: Client, timeout: float) -> None:
        self._nc = nc
        self._js: JetStreamContext = nc.jetstream(timeout=timeout)
        self._timeout = timeout
        self._buckets: dict[str, KeyValue] = {}
        self._recording: set[asyncio.Task[None]] = set()  # events on their way (`record_soon`)

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
    ) -> Store:
        """Connect; `forever` keeps trying (agents), otherwise fail within about `timeout`."""

        async def on_error(err: Exception) -> None:
            log.debug("NATS connection error. error=%s", err)

        async def on_disconnect() -> None:
            log.info("Disconnected from NATS.")

        async def on_reconnect() -> None:
            log.info("Reconnected to NATS.")

        options: dict[str, Any] = {
            "servers": list(servers),
            "user": user,
            "password": password,
            "name": name,
            "connect_timeout": 1.0,
            "allow_reconnect": True,
            "max_reconnect_attempts": -1 if forever else 1,
            "reconnect_time_wait": 0.5,
            "ping_interval": 5,
            "max_outstanding_pings": 2,
            "error_cb": on_error,
            "disconnected_cb": on_disconnect,
            "reconnected_cb": on_reconnect,
        }
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
        except (*_UNAVAILABLE, nats.errors.Error) as err:
            raise StoreUnavailable(f"connect to {where}: {_reason(err)}") from None
        return cls(nc, timeout)

    @property
    def connected(self) -> bool:
        return bool(self._nc.is_connected)

    async def close(self) -> None:
        if self._recording:  # a short wait for events on their way, never a long one
            await asyncio.wait(self._recording, timeout=RECORDING_GRACE_S)
            for task in self._recording:
                task.cancel()
        if not self._nc.is_closed:
            try:
                await self._nc.drain()
            except (TimeoutError, nats.errors.Error, OSError):
                await self._nc.close()

    # --- setup -----------------------------------------------------------------------------

    async def ensure(self, replicas: int) -> None:
        """Create buckets and streams if missing and raise their replicas to `replicas`."""
        try:
            # A JetStream cluster answers only once it has a meta leader; asking with a short
            # timeout first keeps a starting mesh from waiting out the long one.
            await asyncio.wait_for(self._js.account_info(), READY_TIMEOUT_S)
            for bucket in subjects.BUCKETS:
                config = KeyValueConfig(
                    bucket=bucket,
                    history=BUCKET_HISTORY.get(bucket, 1),
                    replicas=replicas,
                    storage=StorageType.FILE,
                )
                try:
                    self._buckets[bucket] = await self._js.create_key_value(config)
                except nats.js.errors.BadRequestError:
                    await self._raise_replicas(f"KV_{bucket}", replicas)
                    self._buckets[bucket] = await self._js.key_value(bucket)
            await self._ensure_stream(
                StreamConfig(
                    name=subjects.EVENTS_STREAM,
                    subjects=[subjects.EVENTS_SUBJECTS],
                    retention=RetentionPolicy.LIMITS,
                    max_age=EVENTS_MAX_AGE_S,
                    max_bytes=EVENTS_MAX_BYTES,
                    discard=DiscardPolicy.OLD,
                    num_replicas=replicas,
                    storage=StorageType.FILE,
                )
            )
            await self._ensure_stream(
                StreamConfig(
                    name=subjects.NOTIFY_STREAM,
                    subjects=[subjects.NOTIFY_SUBJECTS],
                    retention=RetentionPolicy.WORK_QUEUE,
                    num_replicas=replicas,
                    storage=StorageType.FILE,
                )
            )
            await self._ensure_stream(
                StreamConfig(
                    name=subjects.DEPLOY_STREAM,
                    subjects=[subjects.DEPLOY_SUBJECTS],
                    retention=RetentionPolicy.WORK_QUEUE,
                    num_replicas=replicas,
                    storage=StorageType.FILE,
                )
            )
        except _UNAVAILABLE as err:
            raise StoreUnavailable(f"set up buckets: {_reason(err)}") from None

    async def _ensure_stream(self, config: StreamConfig) -> None:
        assert config.name is not None
        try:
            await self._js.add_stream(config)
        except nats.js.errors.BadRequestError:
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
            except _UNAVAILABLE as err:
                raise StoreUnavailable(f"open bucket {bucket}: {_reason(err)}") from None
        return self._buckets[bucket]

    # --- KV ----------------------------------------------------------------------------------

    async def get(self, bucket: str, key: str) -> Entry | None:
        try:
            entry = await (await self._kv(bucket)).get(key)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        except _UNAVAILABLE as err:
            raise StoreUnavailable(f"read {bucket}/{key}: {_reason(err)}") from None
        if entry.value is None and entry.operation is None:
            return None  # an expiry marker (NOTES.md): treat as absent
        return Entry(key, entry.value, entry.revision or 0)

    async def put(self, bucket: str, key: str, value: bytes) -> int:
        try:
            return int(await (await self._kv(bucket)).put(key, value))
        except _UNAVAILABLE as err:
            raise StoreUnavailable(f"write {bucket}/{key}: {_reason(err)}") from None

    async def create(self, bucket: str, key: str, value: bytes, *, ttl: float | None = None) -> int:
        """Write only if the key is absent; `Conflict` otherwise."""
        try:
            return int(await (await self._kv(bucket)).create(key, value, msg_ttl=ttl))
        except nats.js.errors.KeyWrongLastSequenceError:
            raise Conflict(f"{bucket}/{key} exists") from None
        except nats.js.errors.KeyNotFoundError:
            # The key has a last sequence but no message: it is changing (expiring, deleted)
            # while a stream leader is being elected. Not an answer yet: try again.
            raise StoreUnavailable(f"create {bucket}/{key}: the key is changing") from None
        except _UNAVAILABLE as err:
            raise StoreUnavailable(f"create {bucket}/{key}: {_reason(err)}") from None

    async def update(
        self, bucket: str, key: str, value: bytes, *, last: int, ttl: float | None = None
    ) -> int:
        """Write only if the key's revision is still `last`; `Conflict` otherwise.

        With `ttl`, the write also carries a per-message TTL, which `KeyValue.update` cannot.
        """
        headers = {"Nats-Expected-Last-Subject-Sequence": str(last)}
        try:
            ack = await self._js.publish(f"$KV.{bucket}.{key}", value, headers=headers, msg_ttl=ttl)
        except nats.js.errors.APIError as err:
            if err.err_code in (10071, 10164):
                raise Conflict(f"{bucket}/{key} changed since revision {last}") from None
            if isinstance(err, nats.js.errors.ServiceUnavailableError):
                raise StoreUnavailable(f"update {bucket}/{key}: {_reason(err)}") from None
            raise
        except _UNAVAILABLE as err:
            raise StoreUnavailable(f"update {bucket}/{key}: {_reason(err)}") from None
        return int(ack.seq)

    async def delete(self, bucket: str, key: str, *, last: int | None = None) -> None:
        try:
            await (await self._kv(bucket)).delete(key, last=last)
        except nats.js.errors.BadRequestError:
            raise Conflict(f"{bucket}/{key} changed since revision {last}") from None
        except _UNAVAILABLE as err:
            raise StoreUnavailable(f"delete {bucket}/{key}: {_reason(err)}") from None

    async def entries(self, bucket: str, keys: str = ">") -> dict[str, Entry]:
        """Every live key of a bucket (that matches `keys`) with its value."""
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
        """Current values, then `None` (the initial values are complete), then every change;
        a deleted or expired key comes with `value` None.

        nats-py can report "initial values done" before delivering them (its marker races
        the first messages), so for whole-bucket watches the marker is ours: it comes with the
        first entry delivered with nothing pending behind it, or at once for an empty bucket.
        """
        kv = await self._kv(bucket)
        stored = 0
        if keys == ">":
            try:
                stored = (await self._js.stream_info(f"KV_{bucket}")).state.messages
            except _UNAVAILABLE as err:
                raise StoreUnavailable(f"watch {bucket}: {_reason(err)}") from None
        try:
            watcher = await kv.watch(keys)
        except _UNAVAILABLE as err:  # the consumer needs a JetStream meta leader
            raise StoreUnavailable(f"watch {bucket}: {_reason(err)}") from None
        initial_done = False
        try:
            async for item in watcher:
                if item is None:
                    if not initial_done and (keys != ">" or stored == 0):
                        initial_done = True
                        yield None
                    continue
                deleted = item.operation in ("DEL", "PURGE")
                yield Entry(item.key, None if deleted else item.value, item.revision or 0)
                if not initial_done and keys == ">" and not item.delta:
                    initial_done = True
                    yield None
        finally:
            with contextlib.suppress(nats.errors.Error, OSError):
                await watcher.stop()

    # --- events and core subjects ------------------------------------------------------------

    async def record(
        self,
        name: str,
        actor: str,
        subject: str,
        detail: dict[str, Any] | None = None,
        fence: int | None = None,
        *,
        at: float | None = None,
        attempts: int = EVENT_ATTEMPTS,
    ) -> None:
        """Append an event to MESH_EVENTS; failures are logged, never raised (the audit log
        must not stop the action it describes)."""
        event = Event(
            name=name,
            actor=actor,
            subject=subject,
            detail=detail or {},
            fence=fence,
            at=at if at is not None else time.time(),
        )
        data = encode(event)
        for attempt in range(attempts):
            try:
                await self._js.publish(subjects.event(name), data)
                return
            except (*_UNAVAILABLE, nats.errors.Error) as err:
                if attempt == attempts - 1:
                    log.warning("Event not recorded. event=%s error=%s", name, _reason(err))
                else:
                    # The stream is being created, or elects a leader (about 5 s): "no
                    # response" comes at once, so waiting is what spans the election.
                    await asyncio.sleep(min(0.5 * 2**attempt, EVENT_RETRY_MAX_S))

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
        """`record` without waiting for it: for events on a path that must not wait for a
        JetStream election (taking over a role). The event keeps the time of this call (or
        `at`)."""
        at = at if at is not None else time.time()
        # In the background there is time to wait out an election of the events stream.
        task = asyncio.create_task(
            self.record(name, actor, subject, detail, fence, at=at, attempts=BACKGROUND_ATTEMPTS)
        )
        self._recording.add(task)
        task.add_done_callback(self._recording.discard)

    async def recent_events(self, count: int) -> list[Event]:
        try:
            info = await self._js.stream_info(subjects.EVENTS_STREAM)
            first, last = info.state.first_seq, info.state.last_seq
            events = []
            for seq in range(max(first, last - count + 1, 1), last + 1):
                try:
                    msg = await self._js.get_msg(subjects.EVENTS_STREAM, seq)
                except nats.js.errors.NotFoundError:
                    continue
                events.append(decode(msg.data or b"", Event))
            return events
        except _UNAVAILABLE as err:
            raise StoreUnavailable(f"read events: {_reason(err)}") from None

    async def follow_events(self) -> AsyncIterator[Event]:
        sub = await self._js.subscribe(
            subjects.EVENTS_SUBJECTS, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW
        )
        try:
            async for msg in sub.messages:
                yield decode(msg.data, Event)
        finally:
            await sub.unsubscribe()

    async def bucket_leader(self, bucket: str) -> str | None:
        """The nats-server leading the stream behind `bucket` (None: no leader right now)."""
        try:
            info = await self._js.stream_info(f"KV_{bucket}")
        except (*_UNAVAILABLE, nats.errors.Error, nats.js.errors.Error) as err:
            raise StoreUnavailable(f"stream info of KV_{bucket}: {_reason(err)}") from None
        return info.cluster.leader if info.cluster else None

    async def lead_elsewhere(self, bucket: str, server: str) -> str | None:
        """If the nats-server named `server` leads the stream behind `bucket`, ask it to hand
        the leadership to a current peer; the peer asked for, or None when nothing was asked
        (another server leads, the stream has one replica, or no peer is current)."""
        stream = f"KV_{bucket}"
        try:
            info = await self._js.stream_info(stream)
            cluster = info.cluster
            if cluster is None or cluster.leader != server:
                return None
            peers = sorted(
                p.name for p in cluster.replicas or () if p.name and p.current and not p.offline
            )
            if not peers:
                return None
            request = json.dumps({"placement": {"preferred": peers[0]}}).encode()
            reply = await self._nc.request(
                f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", request, timeout=self._timeout
            )
        except (*_UNAVAILABLE, nats.errors.Error, nats.js.errors.Error) as err:
            raise StoreUnavailable(f"move the leader of {stream}: {_reason(err)}") from None
        answer = json.loads(reply.data)
        if not answer.get("success"):
            raise StoreUnavailable(f"move the leader of {stream}: {answer.get('error')}")
        return peers[0]

    async def jetstream_answers(self, wait: float = READY_TIMEOUT_S) -> bool:
        """Whether JetStream answers at all (it has a meta leader, so a quorum of servers)."""
        try:
            await asyncio.wait_for(self._js.account_info(), wait)
        except (*_UNAVAILABLE, nats.errors.Error, nats.js.errors.Error):
            return False
        return True

    # --- work queues ---------------------------------------------------------------------------

    async def enqueue(self, subject: str, data: bytes) -> int:
        """Append to the work-queue stream that takes `subject`; its sequence number."""
        try:
            ack = await self._js.publish(subject, data, timeout=self._timeout)
        except _UNAVAILABLE as err:
            raise StoreUnavailable(f"queue on {subject}: {_reason(err)}") from None
        return int(ack.seq)

    async def work_queue(self, stream: str, subject: str, durable: str) -> WorkQueue:
        """The durable consumer `durable` of a work-queue stream; a message taken and not
        acknowledged comes back after `WORK_ACK_WAIT_S`."""
        config = ConsumerConfig(ack_wait=WORK_ACK_WAIT_S, max_deliver=-1)
        try:
            subscription = await self._js.pull_subscribe(
                subject, durable=durable, stream=stream, config=config
            )
        except (*_UNAVAILABLE, nats.js.errors.Error) as err:
            raise StoreUnavailable(f"consume {stream}: {_reason(err)}") from None
        return WorkQueue(subscription)

    async def queued(self, stream: str) -> int:
        """How many messages a stream holds (for a work queue: not yet acknowledged)."""
        try:
            return int((await self._js.stream_info(stream)).state.messages)
        except _UNAVAILABLE as err:
            raise StoreUnavailable(f"read {stream}: {_reason(err)}") from None

    async def publish(self, subject: str, data: bytes) -> None:
        """Core NATS, fire and forget (heartbeats): silently dropped while disconnected."""
        with contextlib.suppress(nats.errors.Error, OSError):
            await self._nc.publish(subject, data)

    async def request(self, subject: str, data: bytes, timeout: float) -> bytes | None:  # noqa: ASYNC109
        """Core NATS request/reply; None when nobody answers in time."""
        try:
            reply = await self._nc.request(subject, data, timeout=timeout)
        except (nats.errors.Error, OSError):
            return None
        return bytes(reply.data)

    async def subscribe(self, subject: str, handler: Callable[[Msg], Awaitable[None]]) -> Any:
        return await self._nc.subscribe(subject, cb=handler)


class WorkQueue:
    """One consumer of a work-queue stream: `take` a message, then `done` or `later`."""

    def __init__(self, subscription: JetStreamContext.PullSubscription) -> None:
        self._subscription = subscription

    async def take(self, wait: float) -> Msg | None:
        """The next message, or None when none came within `wait` seconds."""
        try:
            (msg,) = await self._subscription.fetch(1, timeout=wait)
        except nats.errors.TimeoutError:
            return None
        except (*_UNAVAILABLE, nats.js.errors.Error) as err:
            raise StoreUnavailable(f"take from work queue: {_reason(err)}") from None
        return msg

    @staticmethod
    async def done(msg: Msg) -> None:
        with contextlib.suppress(nats.errors.Error, OSError):
            await msg.ack()

    @staticmethod
    async def later(msg: Msg, delay: float) -> None:
        """Give it back, to be taken again after `delay` seconds."""
        with contextlib.suppress(nats.errors.Error, OSError):
            await msg.nak(delay=delay)

    async def close(self) -> None:
        with contextlib.suppress(nats.errors.Error, OSError):
            await self._subscription.unsubscribe()


def _reason(err: BaseException) -> str:
    text = str(err).removeprefix("nats: ")
    return text or type(err).__name__
