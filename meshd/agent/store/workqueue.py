"""A work queue on a JetStream work-queue stream: a pull consumer that takes one message at a
time; a message taken and not acknowledged comes back after the consumer's ack wait."""

from __future__ import annotations

import contextlib

import nats.errors
from nats.js import JetStreamContext

from meshd.agent.store import Delivery
from meshd.agent.store.errors import ANY_NATS_ERROR, translated


class NatsWorkQueue:
    """One pull consumer of a work-queue stream."""

    def __init__(self, subscription: JetStreamContext.PullSubscription) -> None:
        self._subscription = subscription

    async def take(self, wait: float) -> Delivery | None:
        with translated("take from work queue"):
            try:
                (msg,) = await self._subscription.fetch(1, timeout=wait)
            except nats.errors.TimeoutError:
                return None  # nothing came within `wait`
        attempt = (msg.metadata.num_delivered or 1) if msg.metadata else 1
        return Delivery(bytes(msg.data), attempt, msg)

    async def done(self, delivery: Delivery) -> None:
        with contextlib.suppress(*ANY_NATS_ERROR):
            await delivery.handle.ack()

    async def later(self, delivery: Delivery, delay: float) -> None:
        with contextlib.suppress(*ANY_NATS_ERROR):
            await delivery.handle.nak(delay=delay)

    async def close(self) -> None:
        with contextlib.suppress(*ANY_NATS_ERROR):
            await self._subscription.unsubscribe()
