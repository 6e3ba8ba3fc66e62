"""Nothing the mesh tells its operator is lost: notifications wait in a JetStream work queue
(real nats-server) until the courier has delivered them to a real SMTP server; a server that
is down gets them when it is back."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

import meshd.roles.courier
from meshd.agent.lease import Term
from meshd.agent.outbox import Outbox
from meshd.agent.store import Store
from meshd.roles.courier import Courier
from plugins.notifiers import Notifier, NotifierConfigError, load_notifier
from protocol.messages import Event, Notification
from tests.support import free_port
from tests.support.smtp import smtp_server
from tests.support.waiting import until


def note(subject: str, channel: str = "email") -> Notification:
    return Notification(
        channel=channel,
        purpose="test",
        subject=subject,
        text=f"{subject}\n",
        html=f"<p>{subject}</p>",
        created_at=time.time(),
        fence=7,
    )


@contextlib.asynccontextmanager
async def courier(
    store: Store, channels: dict[str, Notifier | NotifierConfigError]
) -> AsyncIterator[None]:
    task = asyncio.create_task(
        Courier(store, lambda: channels, "master").lead(
            Term("heartbeat", 7, time.monotonic() + 600)
        )
    )
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def events(store: Store, name: str) -> list[Event]:
    return [e for e in await store.recent_events(100) if e.name == name]


async def test_mail_queued_while_the_server_is_down_is_delivered_once_it_is_back(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(meshd.roles.courier, "backoff", lambda attempt: 0.3 * attempt)
    port = free_port()
    config = {"host": "127.0.0.1", "port": port, "security": "none",
              "from_address": "mesh@example.com", "recipients": ["you@example.com"]}  # fmt: skip
    outbox = Outbox(store)
    for subject in ("first", "second"):
        await outbox.put(note(subject))
    channels: dict[str, Notifier | NotifierConfigError] = {
        "email": load_notifier("smtp", config, None, "email_config.json")
    }
    async with courier(store, channels):

        async def two_failed() -> bool:
            return len(await events(store, "notification_failed")) >= 2

        await until(two_failed, "both first deliveries failed")
        await asyncio.sleep(1.5)  # retries with the same reason are not told again
        failed = await events(store, "notification_failed")
        assert sorted(e.detail["subject"] for e in failed) == ["first", "second"]
        assert all(e.detail["attempt"] == 1 and not e.detail["permanent"] for e in failed)
        assert f"smtp 127.0.0.1:{port}" in failed[0].detail["error"]
        assert await outbox.waiting() == 2
        async with smtp_server(port=port) as box:

            async def both() -> bool:
                return len(box.received) == 2

            await until(both, "both mails")
            assert sorted(m.message["Subject"] for m in box.received) == ["first", "second"]
            await until(lambda: _none_waiting(outbox), "an empty queue")
    sent = await events(store, "notification_sent")
    assert sorted(e.detail["subject"] for e in sent) == ["first", "second"]
    assert all(e.detail["attempt"] >= 2 and e.fence == 7 for e in sent)


async def _none_waiting(outbox: Outbox) -> bool:
    return await outbox.waiting() == 0


async def test_a_wrong_configuration_keeps_the_mail_and_an_unknown_channel_drops_it(
    store: Store,
) -> None:
    outbox = Outbox(store)
    await outbox.put(note("kept"))
    await outbox.put(note("nobody", channel="sms"))
    problem = NotifierConfigError("email_config.json", "username 'x' needs a password")
    async with courier(store, {"email": problem}):
        await until(lambda: events(store, "notification_dropped"), "the sms dropped")
        await until(lambda: events(store, "notification_failed"), "the mail failed")
    (failed,) = await events(store, "notification_failed")
    assert failed.detail["permanent"] is True
    assert "needs a password" in failed.detail["error"]
    (dropped,) = await events(store, "notification_dropped")
    assert dropped.subject == "sms" and "no sms notifier" in dropped.detail["reason"]
    assert await outbox.waiting() == 1  # the mail waits for a configuration that works
