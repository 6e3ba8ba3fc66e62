"""The `heartbeat` role against a real nats-server: one heartbeat per interval across the
mesh, also when the role changes hands; the backup heartbeat while master is down; one
critical alert per failure, by email and SMS."""

from __future__ import annotations

import time

from meshd.agent.lease import Term
from meshd.agent.meshview import MeshView
from meshd.agent.notifiers import Channels
from meshd.agent.store import Store
from meshd.core.notify_settings import NotifySettings
from meshd.core.spec import DesiredState
from meshd.roles.notifications import HeartbeatMails
from plugins.notifiers import NotifierConfigError
from plugins.secrets.env import EnvSecrets
from protocol import subjects
from protocol.codec import decode
from protocol.messages import (
    Event,
    FailureRecord,
    FailureState,
    Notification,
    PublishedSpec,
)
from tests.support.factories import node

SID = "AC" + "0123456789abcdef" * 2
EMAIL = {"host": "127.0.0.1", "port": 2525, "security": "none",
         "from_address": "mesh@example.com", "recipients": ["you@example.com"]}  # fmt: skip
SMS = {"account_sid": SID, "from_number": "+15005550006", "to_numbers": ["+15551234567"]}


async def view_with(failures: dict[str, FailureRecord] | None = None) -> MeshView:
    view = MeshView()
    settings = NotifySettings(email=EMAIL, sms=SMS, heartbeat_s=60.0, backup_heartbeat_s=30.0)
    state = DesiredState(projects=(), notify=settings.to_data())
    await view.set_desired(
        {
            subjects.DESIRED_KEY: PublishedSpec(
                spec=state.to_data(), published_by="t", published_at=0.0
            )
        }
    )
    reported = {"address": "127.0.0.1", "incarnation": 5, "updated_at": time.time() - 1.0}
    await view.set_nodes({n: node(n, **reported) for n in ("master", "web1", "web2")})
    await view.set_allocations({})
    await view.set_failures(failures or {})
    return view


def holder(store: Store, view: MeshView, name: str) -> HeartbeatMails:
    return HeartbeatMails(store, view, name, "test-mesh")


def term(fence: int) -> Term:
    return Term("heartbeat", fence, time.monotonic() + 600)


async def queued(store: Store) -> list[Notification]:
    """What waits in MESH_NOTIFY, oldest first (read without taking it)."""
    found = []
    count = await store.queued(subjects.NOTIFY_STREAM)
    for seq in range(1, 100):
        if len(found) == count:
            break
        try:
            msg = await store._js.get_msg(subjects.NOTIFY_STREAM, seq)  # noqa: SLF001
        except Exception:
            continue
        found.append(decode(msg.data or b"", Notification))
    return found


async def test_one_heartbeat_per_interval_also_when_the_role_changes_hands(store: Store) -> None:
    view = await view_with()
    first = holder(store, view, "master")
    await first.beat(term(3))
    await first.beat(term(3))
    await holder(store, view, "web1").beat(term(9))  # a new holder within the interval
    (mail,) = await queued(store)
    assert (mail.channel, mail.purpose, mail.fence) == ("email", "heartbeat", 3)
    assert mail.subject.startswith("✅ Infrastructure OK - ")
    assert "sent by master" in mail.text and mail.html is not None

    # The interval passed (the mark is set back): the next holder sends the next one.
    entry = await store.get(subjects.DESIRED_BUCKET, subjects.HEARTBEAT_MARK_KEY)
    assert entry is not None and entry.value is not None
    await store.delete(subjects.DESIRED_BUCKET, subjects.HEARTBEAT_MARK_KEY)
    await holder(store, view, "web1").beat(term(9))
    assert [m.fence for m in await queued(store)] == [3, 9]


async def test_while_master_is_down_the_backup_heartbeat_goes_out_instead(store: Store) -> None:
    failed = FailureRecord(
        droplet="master",
        confirmed_by=("web1", "web2"),
        confirmed_at=time.time(),
        state=FailureState.RECOVERING,
        fence=4,
        incarnation=5,
    )
    view = await view_with({"master": failed})
    await holder(store, view, "web1").beat(term(5))
    (mail,) = await queued(store)
    assert mail.purpose == "backup_heartbeat"
    assert mail.subject.startswith("⚠️ Backup Heartbeat - Master may be down - ")
    assert "Backup heartbeat from web1" in mail.text
    assert "• Master status: failed (recovering)" in mail.text
    assert "web2 healthy" in mail.text


async def test_a_confirmed_failure_is_alerted_once_by_email_and_sms(store: Store) -> None:
    failed = FailureRecord(
        droplet="web2",
        confirmed_by=("master", "web1"),
        confirmed_at=time.time(),
        state=FailureState.CONFIRMED,
        fence=0,
        incarnation=5,
    )
    view = await view_with({"web2": failed})
    await holder(store, view, "master").alert(term(3))
    await holder(store, view, "master").alert(term(3))  # a new holder: already alerted
    email, sms = await queued(store)
    assert (email.channel, sms.channel) == ("email", "sms")
    assert email.subject.startswith("🚨 CRITICAL: Droplet web2 failed - ")
    assert "• confirmed by: master, web1" in email.text
    assert sms.text.startswith("CRITICAL: Droplet web2 failed at ")
    assert len(sms.text) <= 160


async def test_notifiers_get_their_secret_from_the_agents_secrets_or_say_which_is_missing() -> None:
    view = await view_with()
    with_token = Channels(lambda: view.notify, EnvSecrets({"TWILIO_AUTH_TOKEN": "tok3n"}))()
    assert {name: n.name for name, n in with_token.items()} == {"email": "smtp", "sms": "sms"}
    without = Channels(lambda: view.notify, EnvSecrets({}))()
    assert isinstance(without["sms"], NotifierConfigError)
    assert "set the secret 'twilio_auth_token'" in str(without["sms"])


async def test_a_failed_recovery_is_alerted_once_while_its_failure_is_open(store: Store) -> None:
    failed = FailureRecord(
        droplet="web2",
        confirmed_by=("master", "web1"),
        confirmed_at=time.time(),
        state=FailureState.DISPLACED,
        fence=4,
        incarnation=5,
    )
    view = await view_with({"web2": failed})

    def told(droplet: str, incarnation: int) -> Event:
        return Event(
            name="recovery_failed",
            actor="web1",
            subject=droplet,
            detail={"error": "the provider cannot rebuild droplets", "step": "displaced",
                    "incarnation": incarnation},
            at=time.time(),
        )  # fmt: skip

    hb = holder(store, view, "master")
    await hb.alert_recovery(term(3), told("web2", 5))
    await hb.alert_recovery(term(3), told("web2", 5))  # told again: alerted already
    await holder(store, view, "web1").alert_recovery(term(8), told("web2", 5))  # new holder
    await hb.alert_recovery(term(3), told("web2", 4))  # an older life: recovered since
    await hb.alert_recovery(term(3), told("web1", 5))  # no open failure
    email, sms = await queued(store)
    assert email.subject.startswith("🚨 CRITICAL: Recovery of web2 failed - ")
    assert "• error: the provider cannot rebuild droplets" in email.text
    assert "• recovery step: displaced" in email.text
    assert sms.channel == "sms" and sms.text.startswith("CRITICAL: Recovery of web2 failed")
