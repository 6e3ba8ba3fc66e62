"""What the mesh tells its operator (pure): the seed's three messages, from what `meshctl
status` knows (`meshd.core.status.mesh_status`) and the recent events.

- `✅ Infrastructure OK - HH:MM`: the regular heartbeat ("silence is the alarm"); when some
  service is not whole it says so in its subject, `⚠️ Infrastructure degraded - HH:MM`, so
  that a filter that archives the OK mails does not hide it.
- `⚠️ Backup Heartbeat - Master may be down - HH:MM`: sent instead while master is down.
- `🚨 CRITICAL: <what> - HH:MM`: a confirmed failure, a failed recovery, JetStream without a
  quorum; by email and SMS.

Times are shown in the configured time zone (UTC by default).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any

from meshd.core.spec import MASTER
from plugins.notifiers import Outgoing
from plugins.templating import render
from protocol.messages import Event

SMS_CHARS = 160


@dataclass(frozen=True, slots=True)
class Summary:
    master: str  # "healthy", "unreachable", "failed (recovering)"
    web_healthy: int
    web_total: int
    services_running: int
    services_desired: int
    backend_running: int
    frontend_running: int
    problems: tuple[str, ...]
    recoveries: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems and self.master == "healthy"


def summarize(
    status: Mapping[str, Any], recoveries: Iterable[Event] = (), tz: tzinfo = UTC
) -> Summary:
    """The heartbeat's figures from `mesh_status` output, with the recoveries to mention."""
    droplets = {d["name"]: d for d in status["droplets"]}
    master = droplets.get(MASTER)
    webs = [d for name, d in droplets.items() if name != MASTER]
    services = status["services"]
    problems = [
        f"{d['name']}: failed ({d['failure']})" for d in droplets.values() if d.get("failure")
    ]
    problems += [
        f"{s['project']}-{s['env']} {s['service']}: {s['healthy']} of {s['desired']} healthy"
        for s in services
        if s["healthy"] < s["desired"]
    ]
    return Summary(
        master=_droplet_state(master),
        web_healthy=sum(1 for d in webs if _droplet_state(d) == "healthy"),
        web_total=len(webs),
        services_running=sum(min(s["healthy"], s["desired"]) for s in services),
        services_desired=sum(s["desired"] for s in services),
        backend_running=_running(services, "backend"),
        frontend_running=_running(services, "frontend"),
        problems=tuple(problems),
        recoveries=tuple(_recovery(e, tz) for e in recoveries if e.name == "droplet_recovered"),
    )


def heartbeat_mail(summary: Summary, at: datetime, mesh: str, sender: str) -> Outgoing:
    title = "✅ Infrastructure OK" if summary.ok else "⚠️ Infrastructure degraded"
    values = _values(summary, at, mesh, sender)
    return Outgoing(
        subject=f"{title} - {at:%H:%M}",
        text=render("email/heartbeat.txt.j2", **values),
        html=render("email/heartbeat.html.j2", **values),
    )


def backup_heartbeat_mail(
    summary: Summary, at: datetime, mesh: str, sender: str, peers: Mapping[str, str]
) -> Outgoing:
    """`peers`: the other droplets and how they are ("healthy", "unreachable")."""
    values = _values(summary, at, mesh, sender)
    values["peers"] = ", ".join(f"{name} {state}" for name, state in sorted(peers.items()))
    return Outgoing(
        subject=f"⚠️ Backup Heartbeat - Master may be down - {at:%H:%M}",
        text=render("email/backup-heartbeat.txt.j2", **values),
        html=render("email/backup-heartbeat.html.j2", **values),
    )


def critical_alert(
    what: str, details: Mapping[str, Any], at: datetime, mesh: str, sender: str
) -> tuple[Outgoing, Outgoing]:
    """The email and the SMS of a critical alert."""
    values = {
        "what": what,
        "details": sorted((str(k), _plain(v)) for k, v in details.items()),
        "checked": f"{at:%Y-%m-%d %H:%M:%S %Z}".strip(),
        "mesh": mesh,
        "sender": sender,
    }
    subject = f"🚨 CRITICAL: {what} - {at:%H:%M}"
    email = Outgoing(
        subject=subject,
        text=render("email/critical-alert.txt.j2", **values),
        html=render("email/critical-alert.html.j2", **values),
    )
    sms = f"CRITICAL: {what} at {at:%H:%M} ({mesh}). Check email for details."
    return email, Outgoing(subject=subject, text=sms[:SMS_CHARS])


def _values(summary: Summary, at: datetime, mesh: str, sender: str) -> dict[str, Any]:
    return {
        "summary": summary,
        "checked": f"{at:%Y-%m-%d %H:%M:%S %Z}".strip(),
        "mesh": mesh,
        "sender": sender,
    }


def _droplet_state(droplet: Mapping[str, Any] | None) -> str:
    if droplet is None:
        return "unreachable"
    if droplet.get("failure"):
        return f"failed ({droplet['failure']})"
    return "healthy" if droplet["healthy"] else "unreachable"


def _running(services: Sequence[Mapping[str, Any]], name: str) -> int:
    return sum(min(s["healthy"], s["desired"]) for s in services if s["service"] == name)


def _recovery(event: Event, tz: tzinfo) -> str:
    took = event.detail.get("since_confirmed_s")
    when = datetime.fromtimestamp(event.at, tz).strftime("%H:%M")
    return f"{event.subject} recovered at {when}" + (f" in {took} s" if took is not None else "")


def _plain(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value))
    return str(value)
