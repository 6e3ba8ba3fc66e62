"""The courier: delivers the notifications waiting in the `MESH_NOTIFY` work queue.

It runs under the `heartbeat` lease (the agent composes it with the heartbeat mails). It takes
one notification at a time, hands it to the notifier of its channel and acknowledges it once
delivered. A delivery that fails goes back on the queue and is taken again after a growing
delay (`backoff`), so nothing is lost while the SMTP server or Twilio is away, nor when the
courier's droplet dies (an unacknowledged message comes back).

Every outcome is an event: `notification_sent`, `notification_failed` (with the reason and
whether only a configuration change can help), `notification_dropped` (a channel that is not
configured).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

from meshd.agent.lease import Term
from meshd.agent.metrics import NOTIFICATION_FAILURES, NOTIFICATIONS_WAITING
from meshd.agent.store import Delivery, Store, StoreUnavailable, WorkQueue
from meshd.core.backoff import delay
from plugins.notifiers import Notifier, NotifierConfigError, NotifyError, Outgoing
from protocol import subjects
from protocol.codec import decode
from protocol.errors import ProtocolError
from protocol.messages import Notification

log = logging.getLogger(__name__)
BACKOFF_BASE_S = 2.0  # before the second delivery attempt, on average half of it
BACKOFF_MAX_S = 300.0
TAKE_WAIT_S = 1.0
RETRY_S = 1.0
COUNT_EVERY_S = 5.0

# A channel's notifier, or why there is none (its configuration is wrong or incomplete).
Channels = Callable[[], Mapping[str, Notifier | NotifierConfigError]]


def backoff(attempt: int) -> float:
    """Seconds before delivery attempt `attempt + 1` (the first attempt is 1): growing, with
    jitter, at most `BACKOFF_MAX_S`; never less than a second."""
    return max(1.0, delay(max(attempt, 1) - 1, BACKOFF_BASE_S, BACKOFF_MAX_S))


class Courier:
    role = subjects.Role.HEARTBEAT  # delivers under the heartbeat lease

    def __init__(self, store: Store, channels: Channels, droplet: str) -> None:
        self.store = store
        self.channels = channels
        self.droplet = droplet
        self._reported: dict[str, str] = {}  # channel -> last failure recorded
        self._counted_at = -COUNT_EVERY_S

    async def _count_waiting(self) -> None:
        """The queue's depth for `/metrics`, every COUNT_EVERY_S (a JetStream request)."""
        if time.monotonic() - self._counted_at >= COUNT_EVERY_S:
            self._counted_at = time.monotonic()
            NOTIFICATIONS_WAITING.set(await self.store.queued(subjects.NOTIFY_STREAM))

    async def lead(self, term: Term) -> None:
        queue: WorkQueue | None = None
        try:
            while True:
                term.ensure_held()
                try:
                    if queue is None:
                        queue = await self.store.work_queue(
                            subjects.NOTIFY_STREAM,
                            subjects.NOTIFY_SUBJECTS,
                            subjects.NOTIFY_CONSUMER,
                        )
                    msg = await queue.take(TAKE_WAIT_S)
                    await self._count_waiting()
                except StoreUnavailable as err:
                    log.info("Notification queue not readable. error=%s", err)
                    queue = None
                    await asyncio.sleep(RETRY_S)
                    continue
                if msg is not None:
                    await self._deliver(term, queue, msg, msg.attempt)
        finally:
            if queue is not None:
                await queue.close()

    async def _deliver(self, term: Term, queue: WorkQueue, msg: Delivery, attempt: int) -> None:
        try:
            notification = decode(msg.data, Notification)
        except ProtocolError as err:
            log.error("Unreadable notification dropped. error=%s", err)
            await queue.done(msg)
            return
        channel = notification.channel
        notifier = self.channels().get(channel)
        if notifier is None:
            log.warning("Notification for an unconfigured channel dropped. channel=%s", channel)
            await queue.done(msg)
            self.store.record_soon(
                "notification_dropped",
                self.droplet,
                channel,
                {"purpose": notification.purpose, "subject": notification.subject,
                 "reason": f"no {channel} notifier is configured"},
                term.fence,
            )  # fmt: skip
            return
        term.ensure_held()
        try:
            if isinstance(notifier, NotifierConfigError):
                raise NotifyError(channel, str(notifier), permanent=True)
            await notifier.send(
                Outgoing(notification.subject, notification.text, notification.html)
            )
        except NotifyError as err:
            NOTIFICATION_FAILURES.labels(channel).inc()
            delay = backoff(attempt)
            await queue.later(msg, delay)
            log.warning(
                "Notification not delivered. channel=%s attempt=%d retry_in_s=%s error=%s",
                channel,
                attempt,
                delay,
                err,
            )
            # Each notification's first failure is told; retries only when the reason changes.
            if attempt == 1 or self._reported.get(channel) != str(err):
                self._reported[channel] = str(err)
                self.store.record_soon(
                    "notification_failed",
                    self.droplet,
                    channel,
                    {
                        "purpose": notification.purpose,
                        "subject": notification.subject,
                        "error": str(err),
                        "permanent": err.permanent,
                        "attempt": attempt,
                        "retry_in_s": delay,
                    },
                    term.fence,
                )
            return
        await queue.done(msg)
        self._reported.pop(channel, None)
        waited = round(time.time() - notification.created_at, 1)
        log.info("Notification sent. channel=%s subject=%s", channel, notification.subject)
        self.store.record_soon(
            "notification_sent",
            self.droplet,
            channel,
            {"purpose": notification.purpose, "subject": notification.subject,
             "attempt": attempt, "waited_s": waited},
            term.fence,
        )  # fmt: skip
