"""The dashboard's pure parts (docs/dashboard.md): what the page shows, from the mesh's status,
the live releases and recent events; the chart's hour of samples; the login's session tokens
and the limit on wrong passwords. Plain data in and out; the agent serves it
(`meshd.agent.dashboard`)."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from protocol.messages import Event
from protocol.releases import Release, ReleaseStatus

SESSION_S = 12 * 3600.0
SAMPLE_S = 10.0
HISTORY_S = 3600.0
FAILURES_ALLOWED = 5  # wrong passwords per client per window, then it waits
FAILURES_ALLOWED_ALL = 50  # per window from every client together: a spread guessing waits too
FAILURE_WINDOW_S = 300.0
CHART_WIDTH, CHART_HEIGHT = 600, 120
PASSWORD_SECRET = "dashboard_password"  # mesh scope: sealed to the trusted droplets


# --- login ------------------------------------------------------------------------------------


def _session_key(password: bytes) -> bytes:
    """Sessions are signed with a key drawn from the password: any lb holder checks them, and a
    new password ends every session."""
    return hmac.new(password, b"meshd dashboard session", hashlib.sha256).digest()


def new_session(password: bytes, now: float) -> str:
    expires = int(now + SESSION_S)
    mac = hmac.new(_session_key(password), str(expires).encode(), hashlib.sha256).hexdigest()
    return f"{expires}.{mac}"


def session_valid(token: str, password: bytes, now: float) -> bool:
    expires, _, mac = token.partition(".")
    if not expires.isdigit() or int(expires) <= now:
        return False
    wanted = hmac.new(_session_key(password), expires.encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(mac, wanted)


def password_matches(given: str, password: bytes) -> bool:
    return hmac.compare_digest(given.encode(), password)


@dataclass(slots=True)
class LoginThrottle:
    """Wrong passwords by client: after `FAILURES_ALLOWED` in `FAILURE_WINDOW_S` a client waits
    until the oldest leaves the window; all clients together after `FAILURES_ALLOWED_ALL`."""

    per_client: int = FAILURES_ALLOWED
    overall: int = FAILURES_ALLOWED_ALL
    window: float = FAILURE_WINDOW_S
    _failures: dict[str, deque[float]] = field(default_factory=dict)
    _all: deque[float] = field(default_factory=deque)

    def wait(self, client: str, now: float) -> float:
        """Seconds `client` must wait before it may try a password (0: it may now)."""
        self._forget(now)
        waits = [0.0]
        mine = self._failures.get(client)
        if mine and len(mine) >= self.per_client:
            waits.append(mine[0] + self.window - now)
        if len(self._all) >= self.overall:
            waits.append(self._all[0] + self.window - now)
        return max(waits)

    def failed(self, client: str, now: float) -> None:
        self._failures.setdefault(client, deque()).append(now)
        self._all.append(now)

    def _forget(self, now: float) -> None:
        for key in list(self._failures):
            times = self._failures[key]
            while times and times[0] <= now - self.window:
                times.popleft()
            if not times:
                del self._failures[key]
        while self._all and self._all[0] <= now - self.window:
            self._all.popleft()


# --- the chart --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    healthy: int
    failed: int


@dataclass(slots=True)
class History:
    """An hour of (healthy, failed) instance counts, one every `SAMPLE_S`: every agent that
    could serve the page keeps it from its own view, so a new lb holder has it at once."""

    every: float = SAMPLE_S
    span: float = HISTORY_S
    samples: deque[Sample] = field(default_factory=deque)

    def add(self, now: float, healthy: int, failed: int) -> None:
        if self.samples and now - self.samples[-1].at < self.every:
            return
        self.samples.append(Sample(now, healthy, failed))
        while self.samples and self.samples[0].at < now - self.span:
            self.samples.popleft()


def instance_counts(status: Mapping[str, Any]) -> tuple[int, int]:
    """Healthy instances, and failed ones: those a service wants and does not have healthy
    (awaiting a first deploy does not count)."""
    healthy = sum(s["healthy"] for s in status["services"])
    failed = sum(
        max(0, s["desired"] - s["healthy"])
        for s in status["services"]
        if not s.get("awaiting_deploy")
    )
    return healthy, failed


def chart(samples: Iterable[Sample], now: float) -> dict[str, Any]:
    """The hour as two SVG polylines' points (x: time, y: count, top is the largest count)."""
    kept = [s for s in samples if s.at >= now - HISTORY_S]
    top = max([1, *(max(s.healthy, s.failed) for s in kept)])

    def points(value: str) -> str:
        return " ".join(
            f"{(s.at - (now - HISTORY_S)) / HISTORY_S * CHART_WIDTH:.1f},"
            f"{CHART_HEIGHT - getattr(s, value) / top * CHART_HEIGHT:.1f}"
            for s in kept
        )

    newest = kept[-1] if kept else None
    return {
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
        "top": top,
        "healthy": points("healthy"),
        "failed": points("failed"),
        "now_healthy": newest.healthy if newest else None,
        "now_failed": newest.failed if newest else None,
        "samples": len(kept),
    }


# --- the page ---------------------------------------------------------------------------------


def live_releases(releases: Iterable[Release]) -> list[dict[str, Any]]:
    """The newest live release of each environment, and the newest release if it is another
    (a deploy under way or failed)."""
    newest: dict[tuple[str, str], Release] = {}
    live: dict[tuple[str, str], Release] = {}
    for release in releases:
        key = (release.project, release.env)
        if key not in newest or release.number > newest[key].number:
            newest[key] = release
        if release.status == ReleaseStatus.LIVE and (
            key not in live or release.number > live[key].number
        ):
            live[key] = release
    rows = []
    for key in sorted(newest):
        last, running = newest[key], live.get(key)
        rows.append(
            {
                "project": key[0],
                "env": key[1],
                "live": running.number if running else None,
                "sha": running.sha[:10] if running else "",
                "live_at": running.live_at if running else None,
                "newest": last.number,
                "newest_status": last.status.value,
            }
        )
    return rows


def event_rows(events: Iterable[Event], now: float) -> list[dict[str, Any]]:
    """Newest first, each with its age and its detail as short text."""
    return [
        {
            "at": time.strftime("%H:%M:%S", time.gmtime(e.at)),
            "age_s": round(max(0.0, now - e.at)),
            "name": e.name,
            "actor": e.actor,
            "subject": e.subject,
            "detail": ", ".join(f"{k}={v}" for k, v in sorted(e.detail.items()))[:160],
        }
        for e in sorted(events, key=lambda e: e.at, reverse=True)
    ]


def page(
    mesh: str,
    status: Mapping[str, Any],
    releases: list[dict[str, Any]],
    events: list[dict[str, Any]],
    samples: Iterable[Sample],
    now: float,
) -> dict[str, Any]:
    """Everything the page's template reads."""
    healthy, failed = instance_counts(status)
    return {
        "mesh": mesh,
        "updated": time.strftime("%H:%M:%S UTC", time.gmtime(now)),
        "lb": status.get("lb"),
        "droplets": status["droplets"],
        "services": status["services"],
        "failures": status["failures"],
        "releases": releases,
        "events": events,
        "droplets_up": sum(1 for d in status["droplets"] if d["healthy"] and not d["failure"]),
        "healthy": healthy,
        "failed": failed,
        "chart": chart(samples, now),
    }
