"""A local mesh tells its operator by mail (real SMTP server): the OK heartbeat every interval
(3 s here), never twice in one, also when the role's holder dies; a critical alert, once, when
a droplet fails."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.support.mesh import BACKEND_ONLY, LocalMesh, local_mesh, write_project
from tests.support.smtp import PASSWORD, USER, Mailbox, Received, smtp_in_thread
from tests.support.twilio import SID, TOKEN, twilio_in_thread
from tests.support.waiting import wait_for

INTERVAL_S = 3.0


def beats(box: Mailbox) -> list[Received]:
    titles = ("✅ Infrastructure OK", "⚠️ Infrastructure degraded", "⚠️ Backup Heartbeat")
    return [m for m in list(box.received) if m.subject.startswith(titles)]


def alerts(box: Mailbox, droplet: str) -> list[Received]:
    title = f"🚨 CRITICAL: Droplet {droplet} failed"
    return [m for m in list(box.received) if m.subject.startswith(title)]


def write_email_config(directory: Path, port: int, **more: object) -> None:
    """`email_config.json` beside the CSV: a plain relay at `port` unless `more` says else."""
    settings = {
        "provider": "smtp",
        "host": "127.0.0.1",
        "port": port,
        "security": "none",
        "from_address": "mesh@example.com",
        "recipients": ["you@example.com"],
        **more,
    }
    (directory / "email_config.json").write_text(json.dumps(settings))


def test_heartbeats_go_out_once_per_interval_and_a_failure_is_alerted_once(
    tmp_path: Path,
) -> None:
    csv, config = write_project(tmp_path, ["shop,3,s-1vcpu-2gb,s-1vcpu-1gb"], BACKEND_ONLY)
    with smtp_in_thread() as box, twilio_in_thread() as texts:
        (tmp_path / "sms_config.json").write_text(
            json.dumps(
                {
                    "provider": "twilio",
                    "account_sid": SID,
                    "from_number": "+15005550006",
                    "to_numbers": ["+15551234567"],
                    "api_base": texts.url,
                }
            )
        )
        write_email_config(
            tmp_path,
            box.port,
            heartbeat_minutes=INTERVAL_S / 60,
            backup_heartbeat_minutes=INTERVAL_S / 60,
        )
        with local_mesh(tmp_path / "mesh", droplets=3, env={"TWILIO_AUTH_TOKEN": TOKEN}) as mesh:
            mesh.ok("publish", csv, "--deploy-config", config, "--wait", timeout=180)
            wait_for(lambda: len(beats(box)) >= 3, timeout=60, what="three heartbeats")
            first = beats(box)[0]
            assert first.recipients == ["you@example.com"]
            assert "• Backend services:" in first.part("plain")
            assert "<table" in first.part("html")

            # The seed's tests of the notification system: the real thing, once.
            said = mesh.ok("notify", "test", "--email", "--critical", timeout=90)
            assert said.count("sent email") == 2, said
            tests = [m for m in list(box.received) if m.subject.endswith("(test)")]
            assert sorted(m.subject.split(" - ")[0] for m in tests) == [
                "✅ Infrastructure OK",
                "🚨 CRITICAL: Test alert (nothing failed)",
            ]
            told = mesh.status()["notifications"]
            assert told["last_sent"]["email"]  # the test mails, or a heartbeat sent since
            assert told["failing"] == {}
            sent = [e for e in mesh.events_about("email") or [] if e["name"] == "notification_sent"]
            assert len([e for e in sent if e["detail"]["subject"].endswith("(test)")]) == 2
            assert "sent sms" in mesh.ok("notify", "test", "--sms", timeout=90)

            killed = time.time()
            mesh.ok("chaos", "kill", "shop-web1")
            wait_for(lambda: alerts(box, "shop-web1"), timeout=60, what="the critical alert")
            wait_for(
                lambda: [t for t in texts.sent if "Droplet shop-web1 failed" in t["Body"]],
                timeout=60,
                what="the critical SMS",
            )
            wait_for(lambda: mesh.recovered("shop-web1", killed), timeout=90, what="recovery")

            # The role's holder dies: the next holder goes on, still one mail per interval.
            holder = next(d["name"] for d in mesh.status()["droplets"] if "heartbeat" in d["roles"])
            count = len(beats(box))
            mesh.ok("chaos", "kill", holder)
            wait_for(lambda: len(beats(box)) >= count + 3, timeout=90, what="heartbeats after")
            time.sleep(2)

        (alert,) = alerts(box, "shop-web1")
        (text,) = [t for t in texts.sent if "Droplet shop-web1 failed" in t["Body"]]
        assert (text["To"], text["From"]) == ("+15551234567", "+15005550006")
        assert texts.refused == 0
        assert "confirmed by" in alert.part("plain")
        # One per interval: delivery times jitter (a mail can wait for the courier), so the
        # count over the whole span is what shows it; a second sender would double it.
        sent = sorted(m.at for m in beats(box))
        intervals = (sent[-1] - sent[0]) / INTERVAL_S
        assert len(sent) - 1 <= intervals + 1.5, (len(sent), intervals)


def test_losing_the_jetstream_quorum_is_told_by_the_droplet_that_is_left(tmp_path: Path) -> None:
    csv, config = write_project(tmp_path, ["shop,1,s-1vcpu-2gb,s-1vcpu-1gb"], BACKEND_ONLY)
    with smtp_in_thread() as box:
        write_email_config(tmp_path, box.port)
        with local_mesh(tmp_path / "mesh", droplets=3) as mesh:
            mesh.ok("publish", csv, "--deploy-config", config, "--wait", timeout=180)
            wait_for(lambda: beats(box), timeout=60, what="the first heartbeat")
            # Two of the three JetStream servers die at once: nothing can be recorded any more.
            mesh.ok("chaos", "kill", "mesh-2")
            mesh.ok("chaos", "kill", "mesh-3")
            title = "🚨 CRITICAL: JetStream has lost its quorum"
            lost = wait_for(
                lambda: [m for m in list(box.received) if m.subject.startswith(title)],
                timeout=90,
                what="the quorum alert",
            )
            time.sleep(12)  # told once per outage
            assert len([m for m in list(box.received) if m.subject.startswith(title)]) == 1
        assert "sent by master" in lost[0].part("plain")
        assert "• droplets still heard: master" in lost[0].part("plain")  # itself


def env_secrets(mesh: LocalMesh) -> dict[str, list[str]]:
    return dict(json.loads(mesh.ok("status", "--json"))["env_secrets"])


def test_a_wrong_smtp_password_is_shown_and_the_mesh_secret_replaces_it(tmp_path: Path) -> None:
    csv, config = write_project(tmp_path, ["shop,1,s-1vcpu-2gb,s-1vcpu-1gb"], BACKEND_ONLY)
    with smtp_in_thread(tmp_path) as box:  # STARTTLS and AUTH required
        assert box.cert is not None
        write_email_config(
            tmp_path,
            box.port,
            security="starttls",
            cert_bundle=str(box.cert),
            username=USER,
            from_address=USER,
        )
        wrong = {"SMTP_PASSWORD": PASSWORD + "-not"}
        with local_mesh(tmp_path / "mesh", droplets=1, env=wrong) as mesh:
            mesh.ok("publish", csv, "--deploy-config", config, "--wait", timeout=180)
            told = wait_for(
                lambda: (
                    (s := mesh.status_if_readable()) and (n := s["notifications"])["failing"] and n
                ),
                timeout=60,
                what="the failing channel in status",
            )
            failing = told["failing"]["email"]
            assert failing["permanent"] is True
            assert f"login as '{USER}' refused (535" in failing["error"]
            assert told["waiting"] >= 1  # kept for when the password is fixed
            shown = mesh.ok("status")
            assert "Notifications by email failing" in shown
            assert box.received == []
            assert wait_for(lambda: env_secrets(mesh), what="the deprecation") == {
                "master": ["smtp_password"]
            }
            # The mesh's own secret replaces the environment variable: the mail goes out.
            mesh.ok("secret", "set", "--mesh", "smtp_password", input=PASSWORD)
            wait_for(lambda: box.received, timeout=120, what="the mail sent with the secret")
            wait_for(lambda: env_secrets(mesh) == {}, what="no secret from the environment")
