"""Telling the operator: the seed's messages (pure), mailed through a real SMTP server
(aiosmtpd: plain, and with STARTTLS and AUTH required) and texted to a local HTTP server that
checks the shape of Twilio's Messages API."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from meshd.core.errors import InputErrors
from meshd.core.notices import backup_heartbeat_mail, critical_alert, heartbeat_mail, summarize
from meshd.core.notify_settings import NotifySettings
from meshd.core.status import notifications
from meshd.inputs.notify_files import load_notify_settings
from meshd.watchers.quorum import teller
from plugins.notifiers import NotifierConfigError, NotifyError, Outgoing, load_notifier
from protocol.messages import Event
from tests.support import free_port
from tests.support.smtp import PASSWORD, USER, smtp_server

AT = datetime(2026, 11, 27, 14, 30, 15, tzinfo=UTC)
SID = "AC" + "0123456789abcdef" * 2


def droplet(name: str, healthy: bool = True, failure: str | None = None) -> dict[str, Any]:
    return {"name": name, "healthy": healthy, "failure": failure}


def service(name: str, healthy: int, desired: int, project: str = "shop") -> dict[str, Any]:
    return {
        "project": project,
        "env": "prod",
        "service": name,
        "healthy": healthy,
        "desired": desired,
    }


STATUS: dict[str, Any] = {
    "droplets": [droplet("master"), droplet("shop-web1"), droplet("shop-web2")],
    "services": [service("backend", 2, 2), service("frontend", 2, 2), service("worker", 1, 1)],
}


# --- the messages (pure) ----------------------------------------------------------------------


def test_the_heartbeat_tells_the_seeds_figures_and_the_recoveries_since_the_last() -> None:
    recovered = Event(
        name="droplet_recovered",
        actor="master",
        subject="shop-web2",
        detail={"since_confirmed_s": 4.5},
        at=AT.timestamp() - 600,
    )
    summary = summarize(STATUS, [recovered])
    message = heartbeat_mail(summary, AT, "prod-mesh", "master")
    assert message.subject == "✅ Infrastructure OK - 14:30"
    assert "• Master: healthy" in message.text
    assert "• Web droplets: 2 healthy" in message.text
    assert "• Services: 5 running" in message.text
    assert "• Backend services: 2 running" in message.text
    assert "• Last check: 2026-11-27 14:30:15 UTC" in message.text
    assert "shop-web2 recovered at 14:20 in 4.5 s" in message.text
    assert "No action needed." in message.text
    assert message.html is not None and "<td>2 healthy</td>" in message.html
    assert "shop-web2 recovered at 14:20 in 4.5 s" in message.html


def test_a_heartbeat_with_something_unhealthy_says_so_in_its_subject() -> None:
    status = {
        "droplets": [droplet("master"), droplet("shop-web1", failure="recovering")],
        "services": [service("backend", 1, 2)],
    }
    message = heartbeat_mail(summarize(status), AT, "m", "master")
    assert message.subject == "⚠️ Infrastructure degraded - 14:30"
    assert "shop-web1: failed (recovering)" in message.text
    assert "shop-prod backend: 1 of 2 healthy" in message.text
    assert "• Web droplets: 0 healthy of 1" in message.text


def test_the_backup_heartbeat_and_the_critical_alert_escape_what_they_show() -> None:
    status = {"droplets": [droplet("master", healthy=False), droplet("web1")], "services": []}
    backup = backup_heartbeat_mail(summarize(status), AT, "m", "web1", {"web2": "healthy"})
    assert backup.subject == "⚠️ Backup Heartbeat - Master may be down - 14:30"
    assert "• Master status: unreachable" in backup.text
    assert "• Other peers: web2 healthy" in backup.text

    email, sms = critical_alert(
        "Droplet shop-web1 failed",
        {"confirmed_by": ["master", "mesh-2"], "error": "<script>alert(1)</script>"},
        AT,
        "m",
        "master",
    )
    assert email.subject == "🚨 CRITICAL: Droplet shop-web1 failed - 14:30"
    assert email.html is not None
    assert "&lt;script&gt;" in email.html and "<script>" not in email.html
    assert "• error: <script>alert(1)</script>" in email.text  # text is not HTML
    assert "• confirmed_by: master, mesh-2" in email.text
    assert sms.text == "CRITICAL: Droplet shop-web1 failed at 14:30 (m). Check email for details."
    assert sms.html is None and len(sms.text) <= 160


# --- smtp -------------------------------------------------------------------------------------


def smtp_config(port: int, **more: Any) -> dict[str, Any]:
    return {
        "provider": "smtp",
        "host": "127.0.0.1",
        "port": port,
        "from_address": USER,
        "recipients": ["you@example.com", "backup@example.com"],
        **more,
    }


MESSAGE = Outgoing(subject="✅ Infrastructure OK - 14:30", text="All OK.\n", html="<p>All OK</p>")


async def test_mail_goes_out_over_starttls_with_login_in_both_parts(tmp_path: Path) -> None:
    async with smtp_server(tmp_path) as box:
        config = smtp_config(box.port, username=USER, cert_bundle=str(box.cert))
        notifier = load_notifier("smtp", config, PASSWORD.encode(), "email_config.json")
        await notifier.send(MESSAGE)
        (mail,) = box.received
        assert mail.sender == USER
        assert mail.recipients == ["you@example.com", "backup@example.com"]
        assert mail.message["Subject"] == "✅ Infrastructure OK - 14:30"
        assert mail.message["To"] == "you@example.com, backup@example.com"
        assert mail.part("plain") == "All OK.\n"
        assert mail.part("html").strip() == "<p>All OK</p>"


async def test_a_wrong_password_is_a_permanent_error_that_says_what_to_check(
    tmp_path: Path,
) -> None:
    async with smtp_server(tmp_path) as box:
        config = smtp_config(box.port, username=USER, cert_bundle=str(box.cert))
        notifier = load_notifier("smtp", config, b"wrong", "email_config.json")
        with pytest.raises(NotifyError) as err:
            await notifier.send(MESSAGE)
        assert err.value.permanent
        assert f"login as '{USER}' refused (535" in str(err.value)
        assert "check the password secret" in str(err.value)
        assert box.received == []


async def test_a_plain_relay_works_without_login_and_a_server_that_is_down_is_transient(
    tmp_path: Path,
) -> None:
    async with smtp_server() as box:
        notifier = load_notifier("smtp", smtp_config(box.port, security="none"), None, "f")
        await notifier.send(Outgoing(subject="text only", text="hello\n"))
        (mail,) = box.received
        assert mail.part("plain") == "hello\n"
        assert not mail.message.is_multipart()
    nobody = load_notifier("smtp", smtp_config(free_port(), security="none"), None, "f")
    with pytest.raises(NotifyError) as err:
        await nobody.send(MESSAGE)
    assert not err.value.permanent


@pytest.mark.parametrize(
    ("more", "password", "expected"),
    [
        ({"host": ""}, None, "host: give the SMTP server's name"),
        ({"security": "ssl"}, None, "security 'ssl': use one of starttls, tls, none"),
        ({"recipients": []}, None, "recipients: give a list of email addresses"),
        ({"username": USER}, None, "needs a password: set the secret 'smtp_password'"),
        ({"username": USER, "security": "none"}, b"x", "would send the password in clear"),
        ({"password": "in the file"}, None, "unknown settings password"),
    ],
)
def test_smtp_configuration_errors_say_what_would_be_right(
    more: dict[str, Any], password: bytes | None, expected: str
) -> None:
    with pytest.raises(NotifierConfigError) as err:
        load_notifier("smtp", smtp_config(25, **more), password, "email_config.json")
    assert str(err.value).startswith("email_config.json: ")
    assert expected in str(err.value)


# --- sms (Twilio's API shape, served locally) ------------------------------------------------


async def test_an_sms_is_a_form_post_with_basic_auth_per_number() -> None:
    seen: list[dict[str, Any]] = []

    async def messages(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        user, _, token = base64.b64decode(auth.removeprefix("Basic ")).decode().partition(":")
        if (user, token) != (SID, "tok3n"):
            return web.json_response({"code": 20003, "message": "Authenticate"}, status=401)
        form = await request.post()
        seen.append({"path": request.path, **{k: str(v) for k, v in form.items()}})
        return web.json_response({"sid": "SM" + "0" * 32, "status": "queued"}, status=201)

    app = web.Application()
    app.router.add_post(f"/2010-04-01/Accounts/{SID}/Messages.json", messages)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        config = {
            "provider": "twilio",
            "account_sid": SID,
            "from_number": "+15005550006",
            "to_numbers": ["+15551234567", "+15557654321"],
            "api_base": f"http://127.0.0.1:{port}",
        }
        await load_notifier("sms", config, b"tok3n", "sms_config.json").send(
            Outgoing(subject="s", text="CRITICAL: x at 14:30")
        )
        assert [(s["To"], s["From"], s["Body"]) for s in seen] == [
            ("+15551234567", "+15005550006", "CRITICAL: x at 14:30"),
            ("+15557654321", "+15005550006", "CRITICAL: x at 14:30"),
        ]
        with pytest.raises(NotifyError) as err:
            await load_notifier("sms", config, b"wrong", "sms_config.json").send(
                Outgoing(subject="s", text="x")
            )
        assert err.value.permanent and "401 20003 Authenticate" in str(err.value)
    finally:
        await runner.cleanup()


def test_sms_configuration_errors_say_what_would_be_right() -> None:
    base = {"account_sid": SID, "from_number": "+15005550006", "to_numbers": ["+15551234567"]}
    with pytest.raises(NotifierConfigError, match="the auth token is missing"):
        load_notifier("sms", base, None, "sms_config.json")
    with pytest.raises(NotifierConfigError, match="to_numbers: give a list of numbers"):
        load_notifier("sms", {**base, "to_numbers": ["555-1234"]}, b"t", "sms_config.json")
    with pytest.raises(NotifierConfigError, match="no notifier 'pager'; known: sms, smtp"):
        load_notifier("pager", base, b"t", "x.json")


# --- the operator's files ---------------------------------------------------------------------


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_notify_settings_come_from_the_seeds_files_without_secrets(tmp_path: Path) -> None:
    email = write_json(
        tmp_path / "email_config.json",
        smtp_config(587, username=USER, heartbeat_minutes=0.05, timezone="Europe/Berlin"),
    )
    sms = write_json(
        tmp_path / "sms_config.json",
        {"account_sid": SID, "from_number": "+15005550006", "to_numbers": ["+15551234567"]},
    )
    settings = load_notify_settings(email, sms)
    assert settings.heartbeat_s == 3.0 and settings.backup_heartbeat_s == 600.0
    assert settings.timezone == "Europe/Berlin"
    assert settings.email is not None and "heartbeat_minutes" not in settings.email
    assert settings.sms is not None and settings.sms["account_sid"] == SID
    assert NotifySettings.from_data(settings.to_data()) == settings
    assert load_notify_settings(None, None) == NotifySettings()


def test_notify_files_with_secrets_or_mistakes_are_refused_with_every_problem(
    tmp_path: Path,
) -> None:
    email = write_json(
        tmp_path / "email_config.json",
        smtp_config(587, username=USER, password="hunter2", timezone="Mars/Olympus"),
    )
    sms = write_json(tmp_path / "sms_config.json", {"account_sid": "nope"})
    with pytest.raises(InputErrors) as err:
        load_notify_settings(email, sms)
    lines = str(err.value).splitlines()
    assert lines[0] == (
        f"{email}:$.password: secrets do not belong in this file; remove it and set the "
        "secret 'smtp_password' (environment variable SMTP_PASSWORD) on the droplets"
    )
    assert lines[1].startswith(f"{sms}: account_sid: give the Twilio account SID")
    assert (
        lines[2] == f"{email}:$.timezone: unknown time zone 'Mars/Olympus'; give one like "
        "UTC or Europe/Berlin"
    )


def test_status_shows_what_waits_and_which_channel_fails_until_it_delivers_again() -> None:
    def event(name: str, channel: str, at: float, **detail: Any) -> Event:
        return Event(name=name, actor="master", subject=channel, detail=detail, at=at)

    events = [
        event("notification_sent", "email", 1.0, subject="✅ Infrastructure OK - 14:30"),
        event("notification_failed", "email", 2.0, error="smtp x:587: refused", permanent=False),
        event("notification_failed", "sms", 3.0, error="twilio: 401", permanent=True),
        event("notification_sent", "sms", 4.0, subject="CRITICAL"),
    ]
    told = notifications(events, 2)
    assert told["waiting"] == 2
    failing = {"error": "smtp x:587: refused", "permanent": False, "at": 2.0}
    assert told["failing"] == {"email": failing}
    assert told["last_sent"]["sms"] == {"subject": "CRITICAL", "at": 4.0}


def test_the_quorum_alert_is_told_by_the_first_droplet_in_ring_order_still_heard() -> None:
    heard = {"master": 90.0, "mesh-2": 99.0, "shop-web1": 99.5}
    assert teller("mesh-3", heard, 100.0) == "mesh-2"  # master not heard for 10 s
    assert teller("mesh-3", {**heard, "master": 95.0}, 100.0) == "master"
    assert teller("shop-web1", {}, 100.0) == "shop-web1"
