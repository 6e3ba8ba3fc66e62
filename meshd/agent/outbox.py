"""Notifications on their way to the operator: whoever decides to tell the operator something
(the `heartbeat` holder, `meshctl notify test`) puts a `Notification` on the `MESH_NOTIFY`
work queue with `Outbox.put`; the courier (`meshd.roles.courier`) delivers it. `meshctl
status` shows how many wait."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from datetime import datetime

from meshd.agent.store import Store, StoreUnavailable
from meshd.core.notices import critical_alert
from meshd.core.notify_settings import NotifySettings
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


async def queue_critical(
    store: Store,
    settings: NotifySettings,
    what: str,
    details: Mapping[str, str],
    origin: tuple[str, str, int],
) -> None:
    """Queue a critical alert (email, and SMS where configured) about `what`; `origin` is the
    mesh, the droplet and the fence of the leader that tells. Nothing when no mail is set up;
    a store that does not answer loses it (the event that goes with it stays)."""
    if settings.email is None:
        return
    mesh, droplet, fence = origin
    now = time.time()
    email, sms = critical_alert(
        what, details, datetime.fromtimestamp(now, settings.zone), mesh, droplet
    )
    outbox = Outbox(store)
    for channel, message in (("email", email), ("sms", sms)):
        if channel == "sms" and settings.sms is None:
            continue
        with contextlib.suppress(StoreUnavailable):
            await outbox.put(
                Notification(
                    channel=channel,
                    purpose="critical",
                    subject=message.subject,
                    text=message.text,
                    html=message.html,
                    created_at=now,
                    fence=fence,
                )
            )
