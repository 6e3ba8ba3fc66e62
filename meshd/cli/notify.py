"""`meshctl notify test`: send the real thing once (the seed's test_heartbeat_email,
test_critical_alert_email and test_sms_notification), through the mesh's own queue and
courier, and say whether it was delivered."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime

import click

from meshd.agent.outbox import Outbox
from meshd.agent.store import Store
from meshd.cli.context import load_context
from meshd.cli.session import connect, read_mesh
from meshd.cli.tables import console
from meshd.core.notices import critical_alert, heartbeat_mail, summarize
from meshd.core.notify_settings import NotifySettings
from meshd.core.spec import DesiredState
from plugins.notifiers import Outgoing
from protocol import subjects
from protocol.codec import decode
from protocol.errors import MeshError
from protocol.messages import Event, Notification, PublishedSpec

OUTCOMES = ("notification_sent", "notification_failed", "notification_dropped")


class NotifyTestFailed(MeshError):
    """A test notification was not delivered."""


@click.group()
def notify() -> None:
    """Notifications: heartbeats and alerts by email (email_config.json) and SMS
    (sms_config.json), published with `meshctl publish`."""


@notify.command("test")
@click.option("--email", "email", is_flag=True, help="A heartbeat mail (the default).")
@click.option("--critical", "is_critical", is_flag=True, help="A critical-alert mail.")
@click.option("--sms", "sms", is_flag=True, help="A test SMS.")
@click.option(
    "--timeout", "wait_s", default=60.0, show_default=True, help="Seconds to wait for delivery."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per message.")
@click.option("--context", "context_name", metavar="NAME", help="Mesh to use.")
def test(
    email: bool,
    is_critical: bool,
    sms: bool,
    wait_s: float,
    as_json: bool,
    context_name: str | None,
) -> None:
    """Queue test messages on the mesh and wait until the heartbeat holder delivered them
    (exit 1 if one was not, with the reason)."""
    if not (email or is_critical or sms):
        email = True
    asyncio.run(_test(email, is_critical, sms, wait_s, as_json, context_name))


async def _test(
    email: bool,
    is_critical: bool,
    sms: bool,
    wait_s: float,
    as_json: bool,
    context_name: str | None,
) -> None:
    context = load_context(context_name)
    store = await connect(context)
    try:
        settings = await _settings(store)
        wanted = [("email", email), ("email", is_critical), ("sms", sms)]
        missing = sorted({c for c, on in wanted if on and getattr(settings, c) is None})
        if missing:
            files = {"email": "email_config.json", "sms": "sms_config.json"}
            raise NotifyTestFailed(
                "notify test: nothing is configured for "
                + ", ".join(f"{c} (publish a {files[c]} beside the CSV)" for c in missing)
            )
        messages = await _messages(store, settings, context.mesh, email, is_critical, sms)
        outcomes = await _send_and_wait(store, messages, wait_s)
    finally:
        await store.close()
    failed = False
    for (channel, message), outcome in zip(messages, outcomes, strict=True):
        name = outcome.get("name") if outcome else None
        failed |= name != "notification_sent"
        if as_json:
            click.echo(json.dumps({"channel": channel, "subject": message.subject,
                                   "outcome": name or "timeout", **(outcome or {})}))  # fmt: skip
        elif name == "notification_sent":
            console.print(f"[green]sent[/] {channel}: {message.subject}")
        else:
            detail = (outcome or {}).get("detail")
            error = detail.get("error") if isinstance(detail, dict) else None
            reason = error or "not delivered in time"
            console.print(f"[red]not sent[/] {channel}: {message.subject}: {reason}")
    if failed:
        raise NotifyTestFailed("notify test: not every message was delivered (see above)")


async def _settings(store: Store) -> NotifySettings:
    entry = await store.get(subjects.DESIRED_BUCKET, subjects.DESIRED_KEY)
    if entry is None or entry.value is None:
        return NotifySettings()
    state = DesiredState.from_data(decode(entry.value, PublishedSpec).spec)
    return NotifySettings.from_data(state.notify)


async def _messages(
    store: Store, settings: NotifySettings, mesh: str, email: bool, is_critical: bool, sms: bool
) -> list[tuple[str, Outgoing]]:
    at = datetime.now(settings.zone)
    result: list[tuple[str, Outgoing]] = []
    if email:
        summary = summarize((await read_mesh(store)).status(), (), settings.zone)
        message = heartbeat_mail(summary, at, mesh, "meshctl notify test")
        result.append(("email", _tagged(message)))
    if is_critical or sms:
        mail, text = critical_alert(
            "Test alert (nothing failed)", {"sent by": "meshctl notify test"}, at, mesh, "meshctl"
        )
        if is_critical:
            result.append(("email", _tagged(mail)))
        if sms:
            result.append(("sms", text))
    return result


def _tagged(message: Outgoing) -> Outgoing:
    return Outgoing(f"{message.subject} (test)", message.text, message.html)


async def _send_and_wait(
    store: Store, messages: list[tuple[str, Outgoing]], wait_s: float
) -> list[dict[str, object] | None]:
    """Queue the messages and collect the first outcome event of each (None: none came)."""
    outcomes: dict[tuple[str, str], dict[str, object]] = {}
    keys = [(channel, message.subject) for channel, message in messages]

    async def watch(events: AsyncIterator[Event]) -> None:
        async for event in events:
            key = (event.subject, str(event.detail.get("subject")))
            if event.name in OUTCOMES and key in keys and key not in outcomes:
                outcomes[key] = {"name": event.name, "detail": event.detail, "by": event.actor}
                if len(outcomes) == len(keys):
                    return

    # Subscribed before anything is queued: no outcome can come before the watch is set up.
    async with store.follow_events() as events:
        outbox = Outbox(store)
        now = time.time()
        for channel, message in messages:
            await outbox.put(
                Notification(
                    channel=channel,
                    purpose="test",
                    subject=message.subject,
                    text=message.text,
                    html=message.html,
                    created_at=now,
                )
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(watch(events), wait_s)
    return [outcomes.get(key) for key in keys]
