"""The audit log: every decision is an event in the `MESH_EVENTS` stream (`meshctl events`
explains why anything happened). Recording never raises: the log must not stop the action it
describes, so a failure is retried with backoff and then logged."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from meshd.agent.backoff import retries
from meshd.agent.store import StoreUnavailable
from meshd.agent.store.errors import ANY_NATS_ERROR, reason
from protocol import subjects
from protocol.codec import decode, encode
from protocol.errors import ProtocolError
from protocol.messages import Event

log = logging.getLogger(__name__)
RECORD_ATTEMPTS = 3  # `record`: an action waits for its event only briefly
BACKGROUND_SPAN_S = 40.0  # `record_soon`: long enough to wait out a stream election (~5 s)
RETRY_BASE_S = 0.5
RETRY_CAP_S = 8.0
RECORDING_GRACE_S = 2.0  # on close, events on their way get this long
READ_TIMEOUT_S = 2.0
READ_ATTEMPTS = 3  # `recent`: a stream election lasts a few seconds


class Events:
    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self._recording: set[asyncio.Task[None]] = set()  # events on their way (`record_soon`)

    async def record(
        self,
        name: str,
        actor: str,
        subject: str,
        detail: dict[str, Any] | None = None,
        fence: int | None = None,
        *,
        at: float | None = None,
        attempts: int | None = RECORD_ATTEMPTS,
        deadline: float | None = None,
    ) -> None:
        event = Event(
            name=name,
            actor=actor,
            subject=subject,
            detail=detail or {},
            fence=fence,
            at=at if at is not None else time.time(),
        )
        data = encode(event)
        problem = "not tried"
        # The stream may be created or electing a leader: "no response" comes at once, so
        # waiting is what spans the election.
        async for _ in retries(RETRY_BASE_S, RETRY_CAP_S, attempts=attempts, deadline=deadline):
            try:
                await self._js.publish(subjects.event(name), data)
                return
            except ANY_NATS_ERROR as err:
                problem = reason(err)
        log.warning("Event not recorded. event=%s error=%s", name, problem)

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
        at = at if at is not None else time.time()
        deadline = time.monotonic() + BACKGROUND_SPAN_S
        task = asyncio.create_task(
            self.record(
                name, actor, subject, detail, fence, at=at, attempts=None, deadline=deadline
            )
        )
        self._recording.add(task)
        task.add_done_callback(self._recording.discard)

    async def close(self) -> None:
        if self._recording:  # a short wait for events on their way, never a long one
            await asyncio.wait(self._recording, timeout=RECORDING_GRACE_S)
            for task in self._recording:
                task.cancel()

    async def recent(self, count: int) -> list[Event]:
        """The last `count` events, oldest first, read in one flow (not a request each); a read
        that JetStream did not answer (the stream elects a leader, often just after a droplet
        died, which is when the log is read most) is tried again, briefly."""
        for attempt in range(1, READ_ATTEMPTS + 1):
            try:
                return await self._recent(count)
            except StoreUnavailable as err:
                if attempt == READ_ATTEMPTS:
                    raise
                log.info("Events not read; trying again. error=%s", err)
                await asyncio.sleep(RETRY_BASE_S * attempt)
        raise AssertionError("unreachable")

    async def _recent(self, count: int) -> list[Event]:
        try:
            info = await self._js.stream_info(subjects.EVENTS_STREAM)
            first, last = info.state.first_seq, info.state.last_seq
            if last == 0 or count <= 0:
                return []
            start = max(first, last - count + 1, 1)
            config = ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start
            )
            subscription = await self._js.subscribe(
                subjects.EVENTS_SUBJECTS, ordered_consumer=True, config=config
            )
        except ANY_NATS_ERROR as err:
            raise StoreUnavailable(f"read events: {reason(err)}") from None
        events: list[Event] = []
        try:
            async with asyncio.timeout(READ_TIMEOUT_S * 2):
                while True:
                    msg = await subscription.next_msg(timeout=READ_TIMEOUT_S)
                    event = _decoded(msg.data)
                    if event is not None:
                        events.append(event)
                    if msg.metadata.sequence.stream >= last:
                        break
        except ANY_NATS_ERROR as err:  # asyncio.TimeoutError is among them
            raise StoreUnavailable(f"read events: {reason(err)}") from None
        finally:
            await _unsubscribe(subscription)
        return events

    @contextlib.asynccontextmanager
    async def follow(self) -> AsyncIterator[AsyncIterator[Event]]:
        try:
            subscription = await self._js.subscribe(
                subjects.EVENTS_SUBJECTS, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW
            )
        except ANY_NATS_ERROR as err:
            raise StoreUnavailable(f"follow events: {reason(err)}") from None

        async def events() -> AsyncIterator[Event]:
            try:
                async for msg in subscription.messages:
                    event = _decoded(msg.data)
                    if event is not None:
                        yield event
            except ANY_NATS_ERROR as err:
                raise StoreUnavailable(f"follow events: {reason(err)}") from None

        try:
            yield events()
        finally:
            await _unsubscribe(subscription)


def _decoded(data: bytes) -> Event | None:
    try:
        return decode(data, Event)
    except ProtocolError as err:  # one broken entry must not hide the rest of the log
        log.warning("Unreadable event skipped. error=%s", err)
        return None


async def _unsubscribe(subscription: JetStreamContext.PushSubscription) -> None:
    with contextlib.suppress(*ANY_NATS_ERROR):
        await subscription.unsubscribe()
