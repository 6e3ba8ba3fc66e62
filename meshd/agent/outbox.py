"""Notifications on their way to the operator: whoever decides to tell the operator something
(the `heartbeat` holder, `meshctl notify test`) puts a `Notification` on the `MESH_NOTIFY`
work queue with `Outbox.put`; the courier (`meshd.roles.courier`) delivers it. `meshctl
status` shows how many wait."""

from __future__ import annotations

from meshd.agent.store import Store
from protocol import subjects
from protocol.codec import encode
from protocol.messages import Notification


class Outbox:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def put(self, notification: Notification) -> None:
        await self.store.enqueue(subjects.notify(notification.channel), encode(notification))

    async def waiting(self) -> int:
        return await self.store.queued(subjects.NOTIFY_STREAM)
