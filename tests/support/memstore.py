"""An in-memory `Store` with JetStream's semantics, for unit tests of roles, leases and loops
that run in milliseconds: per-bucket revisions, create and compare-and-set, per-key TTL on a
clock the test moves, watches that deliver current values then a `None` marker then changes,
an event log, work queues, core pub/sub and object stores (`memobjects`).

What a test can do to it: `clock.advance(s)` (TTLs), `unavailable = True` (every call raises
`StoreUnavailable`, as during an election), `break_watches()` (every open watch ends with
`StoreUnavailable`), and `before_write(hook)` (run `hook(bucket, key)` before a write lands,
to interleave another writer's write, as a slow network would).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from meshd.agent.store import (
    Conflict,
    Delivery,
    Entry,
    Handler,
    Received,
    StoreUnavailable,
)
from protocol import subjects as names
from protocol.codec import decode, encode
from protocol.logs import LogBatch
from protocol.messages import Event
from tests.support.memobjects import MemoryObjects


@dataclass
class Clock:
    """Seconds that tests move by hand; starts at a wall-clock-like value."""

    now: float = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class _Value:
    data: bytes
    revision: int
    expires: float | None


@dataclass
class _Bucket:
    values: dict[str, _Value] = field(default_factory=dict)
    revision: int = 0
    watchers: list[tuple[str, asyncio.Queue[Entry | None | Exception]]] = field(
        default_factory=list
    )


def _matches(pattern: str, key: str) -> bool:
    """NATS wildcards on dotted keys: `>` the rest, `*` one token."""
    if pattern == ">":
        return True
    pattern_parts, key_parts = pattern.split("."), key.split(".")
    for i, part in enumerate(pattern_parts):
        if part == ">":
            return len(key_parts) > i
        if i >= len(key_parts) or (part != "*" and part != key_parts[i]):
            return False
    return len(pattern_parts) == len(key_parts)


class MemoryStore(MemoryObjects):
    def __init__(self, clock: Clock | None = None) -> None:
        super().__init__()
        self.clock = clock or Clock()
        self.unavailable = False
        self.events: list[Event] = []
        self.logs: list[tuple[str, LogBatch]] = []  # (subject, batch) as shipped
        self._buckets: defaultdict[str, _Bucket] = defaultdict(_Bucket)
        self._event_followers: list[asyncio.Queue[Event]] = []
        self._queues: defaultdict[str, list[tuple[int, str, bytes]]] = defaultdict(list)
        self._queue_seq = 0
        # Taken and not yet acknowledged (also while waiting to come back): seq -> message.
        self._taken: dict[int, tuple[str, str, bytes]] = {}
        self._delivered: defaultdict[int, int] = defaultdict(int)
        self._subscribers: list[tuple[str, Handler]] = []
        self._hooks: list[Callable[[str, str], Awaitable[None] | None]] = []
        self._recording: set[asyncio.Task[None]] = set()
        self.closed = False
        self.closing: list[Callable[[], Awaitable[None]]] = []

    # --- what tests do -----------------------------------------------------------------------

    def before_write(self, hook: Callable[[str, str], Awaitable[None] | None]) -> None:
        self._hooks.append(hook)

    def break_watches(self) -> None:
        for bucket in self._buckets.values():
            for _, queue in bucket.watchers:
                queue.put_nowait(StoreUnavailable("watch broken (test)"))

    def value(self, bucket: str, key: str) -> bytes | None:
        found = self._live(bucket).get(key)
        return found.data if found else None

    # --- the Store protocol ------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return not self.unavailable

    async def close(self) -> None:
        self.closed = True
        while self.closing:
            await self.closing.pop(0)()

    async def ensure(self, replicas: int) -> None:
        self._check()

    async def get(self, bucket: str, key: str) -> Entry | None:
        self._check()
        found = self._live(bucket).get(key)
        return Entry(key, found.data, found.revision) if found else None

    async def put(self, bucket: str, key: str, value: bytes) -> int:
        await self._before(bucket, key)
        return self._write(bucket, key, value, None)

    async def create(self, bucket: str, key: str, value: bytes, *, ttl: float | None = None) -> int:
        await self._before(bucket, key)
        if key in self._live(bucket):
            raise Conflict(f"{bucket}/{key} exists")
        return self._write(bucket, key, value, ttl)

    async def update(
        self, bucket: str, key: str, value: bytes, *, last: int, ttl: float | None = None
    ) -> int:
        await self._before(bucket, key)
        found = self._buckets[bucket].values.get(key)
        current = found.revision if found else 0
        if current != last:
            raise Conflict(f"{bucket}/{key} changed since revision {last}")
        return self._write(bucket, key, value, ttl)

    async def delete(self, bucket: str, key: str, *, last: int | None = None) -> None:
        await self._before(bucket, key)
        found = self._live(bucket).get(key)
        if last is not None and (found is None or found.revision != last):
            raise Conflict(f"delete {bucket}/{key}: changed since revision {last}")
        store = self._buckets[bucket]
        store.revision += 1
        store.values.pop(key, None)
        self._notify(bucket, Entry(key, None, store.revision))

    async def entries(self, bucket: str, keys: str = ">") -> dict[str, Entry]:
        self._check()
        return {
            k: Entry(k, v.data, v.revision)
            for k, v in self._live(bucket).items()
            if _matches(keys, k)
        }

    async def watch(self, bucket: str, keys: str = ">") -> AsyncIterator[Entry | None]:
        self._check()
        queue: asyncio.Queue[Entry | None | Exception] = asyncio.Queue()
        store = self._buckets[bucket]
        for key, value in sorted(self._live(bucket).items(), key=lambda kv: kv[1].revision):
            if _matches(keys, key):
                queue.put_nowait(Entry(key, value.data, value.revision))
        queue.put_nowait(None)
        store.watchers.append((keys, queue))
        try:
            while True:
                item = await queue.get()
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            store.watchers.remove((keys, queue))

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
        if self.unavailable:
            return  # not recorded, as after the retries ran out
        event = Event(
            name=name,
            actor=actor,
            subject=subject,
            detail=detail or {},
            fence=fence,
            at=at if at is not None else self.clock(),
        )
        decode(encode(event), Event)  # only what the wire takes
        self.events.append(event)
        for follower in self._event_followers:
            follower.put_nowait(event)

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
        at = at if at is not None else self.clock()

        async def soon() -> None:  # as the real store: waits out an unavailable store
            while self.unavailable:
                await asyncio.sleep(0.01)
            await self.record(name, actor, subject, detail, fence, at=at)

        task = asyncio.get_running_loop().create_task(soon())
        self._recording.add(task)
        task.add_done_callback(self._recording.discard)

    async def recent_events(self, count: int) -> list[Event]:
        self._check()
        return list(self.events[-count:]) if count > 0 else []

    @contextlib.asynccontextmanager
    async def follow_events(self) -> AsyncIterator[AsyncIterator[Event]]:
        self._check()
        queue: asyncio.Queue[Event] = asyncio.Queue()
        self._event_followers.append(queue)

        async def events() -> AsyncIterator[Event]:
            while True:
                yield await queue.get()

        try:
            yield events()
        finally:
            self._event_followers.remove(queue)

    async def round_trip(self) -> float:
        self._check()
        return 0.0

    async def ship_logs(self, subject: str, data: bytes, batch_id: str) -> None:
        self._check()
        self.logs.append((subject, decode(data, LogBatch)))

    async def read_logs(
        self, subject_filter: str, *, since: float | None, follow: bool
    ) -> AsyncIterator[LogBatch | None]:
        self._check()
        for subject, batch in list(self.logs):
            if _subject_matches(subject_filter, subject) and (
                since is None or any(line.at >= since for line in batch.lines)
            ):
                yield batch
        if follow:
            yield None

    async def enqueue(self, subject: str, data: bytes) -> int:
        self._check()
        self._queue_seq += 1
        stream = names.NOTIFY_STREAM if subject.startswith("mesh.notify.") else subject
        self._queues[stream].append((self._queue_seq, subject, data))
        return self._queue_seq

    async def work_queue(
        self, stream: str, subject: str, durable: str, ack_wait: float | None = None
    ) -> MemoryWorkQueue:
        self._check()
        return MemoryWorkQueue(self, stream)

    async def queued(self, stream: str) -> int:
        self._check()
        return len(self._queues[stream]) + sum(1 for s, _, _ in self._taken.values() if s == stream)

    async def publish(self, subject: str, data: bytes) -> None:
        if self.unavailable:
            return
        for pattern, handler in list(self._subscribers):
            if _matches(pattern, subject):

                async def ignore(_: bytes) -> None:
                    return None

                await handler(Received(subject, data, ignore))

    async def request(self, subject: str, data: bytes, timeout: float) -> bytes | None:  # noqa: ASYNC109
        if self.unavailable:
            return None
        answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def respond(reply: bytes) -> None:
            if not answer.done():
                answer.set_result(reply)

        for pattern, handler in list(self._subscribers):
            if _matches(pattern, subject):
                await handler(Received(subject, data, respond))
        try:
            return await asyncio.wait_for(answer, timeout)
        except TimeoutError:
            return None

    async def subscribe(self, subject: str, handler: Handler) -> MemorySubscription:
        self._check()
        entry = (subject, handler)
        self._subscribers.append(entry)
        return MemorySubscription(self._subscribers, entry)

    async def jetstream_answers(self, wait: float = 1.0) -> bool:
        return not self.unavailable

    async def bucket_leader(self, bucket: str) -> str | None:
        self._check()
        return "memory"

    async def lead_elsewhere(self, bucket: str, server: str) -> str | None:
        self._check()
        return None

    # --- inside --------------------------------------------------------------------------

    def _check(self) -> None:
        if self.unavailable:
            raise StoreUnavailable("the store is unavailable (test)")

    async def _before(self, bucket: str, key: str) -> None:
        self._check()
        for hook in list(self._hooks):
            result = hook(bucket, key)
            if result is not None:
                await result

    def _live(self, bucket: str) -> dict[str, _Value]:
        store = self._buckets[bucket]
        now = self.clock()
        for key, value in list(store.values.items()):
            if value.expires is not None and value.expires <= now:
                del store.values[key]
                store.revision += 1
                self._notify(bucket, Entry(key, None, store.revision))
        return store.values

    def _write(self, bucket: str, key: str, data: bytes, ttl: float | None) -> int:
        store = self._buckets[bucket]
        store.revision += 1
        expires = self.clock() + ttl if ttl is not None else None
        store.values[key] = _Value(data, store.revision, expires)
        self._notify(bucket, Entry(key, data, store.revision))
        return store.revision

    def _notify(self, bucket: str, entry: Entry) -> None:
        for keys, queue in self._buckets[bucket].watchers:
            if _matches(keys, entry.key):
                queue.put_nowait(entry)


class MemorySubscription:
    def __init__(self, subscribers: list[tuple[str, Handler]], entry: tuple[str, Handler]) -> None:
        self._subscribers = subscribers
        self._entry = entry

    async def unsubscribe(self) -> None:
        with contextlib.suppress(ValueError):
            self._subscribers.remove(self._entry)


class MemoryWorkQueue:
    def __init__(self, store: MemoryStore, stream: str) -> None:
        self._store = store
        self._stream = stream

    async def take(self, wait: float) -> Delivery | None:
        deadline = time.monotonic() + wait
        while True:
            self._store._check()  # noqa: SLF001
            waiting = self._store._queues[self._stream]  # noqa: SLF001
            if waiting:
                seq, subject, data = waiting.pop(0)
                self._store._delivered[seq] += 1  # noqa: SLF001
                self._store._taken[seq] = (self._stream, subject, data)  # noqa: SLF001
                return Delivery(data, self._store._delivered[seq], seq)  # noqa: SLF001
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(0.01)

    async def done(self, delivery: Delivery) -> None:
        self._store._taken.pop(delivery.handle, None)  # noqa: SLF001

    async def later(self, delivery: Delivery, delay: float) -> None:
        seq = delivery.handle

        def back() -> None:
            taken = self._store._taken.pop(seq, None)  # noqa: SLF001
            if taken is not None:
                stream, subject, data = taken
                self._store._queues[stream].insert(0, (seq, subject, data))  # noqa: SLF001

        asyncio.get_running_loop().call_later(delay, back)

    async def close(self) -> None:
        return None


def _subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` one token, `>` the rest."""
    wanted, tokens = pattern.split("."), subject.split(".")
    for i, part in enumerate(wanted):
        if part == ">":
            return len(tokens) > i
        if i >= len(tokens) or part not in ("*", tokens[i]):
            return False
    return len(tokens) == len(wanted)
