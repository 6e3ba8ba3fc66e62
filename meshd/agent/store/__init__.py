"""The mesh's shared state, as the rest of meshd sees it: KV buckets, object stores, the audit
log of events, work queues and core subjects, behind the `Store` protocol.

The error contract: every failure of the store is a `StoreError`. `Conflict` means a
compare-and-set lost (somebody else wrote first: re-read and decide again); `StoreUnavailable`
means no answer (no server, no quorum, a leader election, a timeout: try again later);
`StoreRefused` means JetStream refused the request itself. No `nats` type and no `nats` error
crosses this boundary. Callers catch `Conflict` and `StoreUnavailable` only, so that a
programming error, or a refusal, surfaces with its traceback (the agent exits, its supervisor
restarts it, instances keep running).

`open_store` connects to NATS JetStream (`jetstream.NatsStore`, the only code that touches
NATS); tests also use an in-memory store with the same behaviour.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from meshd.core.trust import ClientTrust
from protocol.errors import MeshError
from protocol.logs import LogBatch
from protocol.messages import Event


class StoreError(MeshError):
    """The store could not do what was asked."""


class StoreUnavailable(StoreError):
    """The mesh's NATS servers could not be reached or JetStream did not answer: try later."""


class Unreachable(StoreUnavailable):
    """No NATS server of the mesh could be reached at all (not: JetStream did not answer)."""


class Conflict(StoreError):
    """A compare-and-set write lost: somebody else wrote first."""


class StoreRefused(StoreError):
    """JetStream refused the request itself (a bug, or a bucket whose settings differ):
    trying again will not help, so nothing retries it."""


@dataclass(frozen=True, slots=True)
class Entry:
    """A KV entry; `value` None when the key was deleted or expired (in a watch)."""

    key: str
    value: bytes | None
    revision: int


@dataclass(frozen=True, slots=True)
class Received:
    """A core message: its subject and bytes, and `respond` to answer a request (a no-op for
    a message nobody waits on)."""

    subject: str
    data: bytes
    respond: Callable[[bytes], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Delivery:
    """A message taken from a work queue: its bytes and how many times it was delivered
    (1 the first time). `handle` is the store's own, for `done` and `later`."""

    data: bytes
    attempt: int
    handle: Any


Handler = Callable[[Received], Awaitable[None]]


class Subscription(Protocol):
    async def unsubscribe(self) -> None:
        """Stop receiving; never raises (a closed connection has nothing left to stop)."""
        ...


class WorkQueue(Protocol):
    """One consumer of a work-queue stream: `take` a message, then `done` or `later`."""

    async def take(self, wait: float) -> Delivery | None:
        """The next message, or None when none came within `wait` seconds."""
        ...

    async def done(self, delivery: Delivery) -> None: ...

    async def later(self, delivery: Delivery, delay: float) -> None:
        """Give it back, to be taken again after `delay` seconds."""
        ...

    async def close(self) -> None: ...


class Store(Protocol):
    """What agents, roles and `meshctl` need of the mesh's shared state."""

    closing: list[Callable[[], Awaitable[None]]]
    """Awaited, in order, once the store is closed: what its connection needed (a tunnel)."""

    @property
    def connected(self) -> bool: ...

    async def close(self) -> None: ...

    async def ensure(self, replicas: int) -> None:
        """Create the buckets and streams if missing; raise their replicas to `replicas`."""
        ...

    # --- KV: keys with revisions, compare-and-set, per-key TTL ------------------------------

    async def get(self, bucket: str, key: str) -> Entry | None: ...

    async def put(self, bucket: str, key: str, value: bytes) -> int:
        """Write whatever is there (only for keys one writer owns); the new revision."""
        ...

    async def create(self, bucket: str, key: str, value: bytes, *, ttl: float | None = None) -> int:
        """Write only if the key is absent; `Conflict` otherwise."""
        ...

    async def update(
        self, bucket: str, key: str, value: bytes, *, last: int, ttl: float | None = None
    ) -> int:
        """Write only if the key's revision is still `last`; `Conflict` otherwise."""
        ...

    async def delete(self, bucket: str, key: str, *, last: int | None = None) -> None:
        """Delete (only at revision `last`, if given: `Conflict` otherwise)."""
        ...

    async def entries(self, bucket: str, keys: str = ">") -> dict[str, Entry]:
        """Every live key of a bucket (that matches `keys`) with its value."""
        ...

    def watch(self, bucket: str, keys: str = ">") -> AsyncIterator[Entry | None]:
        """Current values, then `None` (the initial values are complete), then every change;
        a deleted or expired key comes with `value` None. Ends with `StoreUnavailable` when
        the watch breaks."""
        ...

    # --- object stores: named files of any size, in chunks (`schema.OBJECT_STORES`) ------

    async def put_object(
        self, store: str, name: str, path: Path, meta: dict[str, str] | None = None
    ) -> int:
        """Store the file at `path` as object `name` (replacing one of the name), streamed in
        chunks; `meta` travels as its headers. The number of bytes stored."""
        ...

    async def get_object(self, store: str, name: str, path: Path) -> bool:
        """Write object `name` to the file `path` (created or truncated), streamed; False
        (and no file left at `path`) when there is no such object."""
        ...

    async def object_names(self, store: str) -> dict[str, int]:
        """Every object of `store` (deleted ones left out): name -> size in bytes."""
        ...

    async def delete_object(self, store: str, name: str) -> None:
        """Delete object `name`; nothing happens when there is none."""
        ...

    # --- the audit log -------------------------------------------------------------------

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
        """Append an event; a failure is logged, never raised (the audit log must not stop
        the action it describes)."""
        ...

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
        """`record` in the background, retried through a stream election."""
        ...

    async def recent_events(self, count: int) -> list[Event]:
        """The last `count` events, oldest first."""
        ...

    def follow_events(self) -> AbstractAsyncContextManager[AsyncIterator[Event]]:
        """Events recorded from now on: subscribed when the block is entered, so nothing
        recorded inside the block is missed."""
        ...

    async def round_trip(self) -> float:
        """Seconds from a PING to its PONG (`StoreUnavailable` when none comes)."""
        ...

    # --- the logs stream (meshd/agent/store/logs.py) -------------------------------------

    async def ship_logs(self, subject: str, data: bytes, batch_id: str) -> None:
        """Append a `LogBatch`, acknowledged, once per `batch_id` however often it is sent;
        `StoreUnavailable` at once when it cannot be."""
        ...

    def read_logs(
        self, subject_filter: str, *, since: float | None, follow: bool
    ) -> AsyncIterator[LogBatch | None]:
        """Batches on subjects matching the filter, from `since` (None: the oldest kept); without
        `follow` the iteration ends once it has caught up; with it, None marks that point and
        new batches follow."""
        ...

    # --- work queues ---------------------------------------------------------------------

    async def enqueue(self, subject: str, data: bytes) -> int: ...

    async def work_queue(
        self, stream: str, subject: str, durable: str, ack_wait: float | None = None
    ) -> WorkQueue:
        """The durable consumer `durable` of `subject` in `stream`: a message taken and not
        acknowledged comes back after `ack_wait` seconds (None: a minute) when it is created."""
        ...

    async def queued(self, stream: str) -> int:
        """How many messages a stream holds (for a work queue: not yet acknowledged)."""
        ...

    # --- core subjects (no JetStream: they work without a quorum) ------------------------

    async def publish(self, subject: str, data: bytes) -> None:
        """Fire and forget: silently dropped while disconnected."""
        ...

    async def request(self, subject: str, data: bytes, timeout: float) -> bytes | None:  # noqa: ASYNC109
        """Request/reply; None when nobody answers in time."""
        ...

    async def subscribe(self, subject: str, handler: Handler) -> Subscription: ...

    # --- the JetStream cluster itself ----------------------------------------------------

    async def jetstream_answers(self, wait: float = 1.0) -> bool:
        """Whether JetStream answers at all (it has a meta leader, so a quorum of servers)."""
        ...

    async def bucket_leader(self, bucket: str) -> str | None:
        """The server leading the stream behind `bucket` (None: no leader right now)."""
        ...

    async def lead_elsewhere(self, bucket: str, server: str) -> str | None:
        """If `server` leads the stream behind `bucket`, hand its leadership to a current
        peer; the peer asked for, or None when nothing was asked."""
        ...


async def open_store(
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
) -> Store:
    """Connect to the mesh's NATS servers; `forever` keeps trying (agents), otherwise fail
    within about `timeout` with `StoreUnavailable`. `inbox_prefix` replaces `_INBOX` in the
    connection's reply subjects (a user allowed to listen on its own inboxes only). A lost
    connection is tried again `reconnects` times per server, half a second apart. `trust`:
    TLS, verifying the servers from the mesh CA (None: plain NATS, local meshes)."""
    from meshd.agent.store.jetstream import NatsStore

    return await NatsStore.connect(
        servers,
        user,
        password,
        name=name,
        forever=forever,
        timeout=timeout,
        inbox_prefix=inbox_prefix,
        reconnects=reconnects,
        trust=trust,
    )
