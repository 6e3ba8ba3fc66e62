"""When the mesh's certificates are ordered and what needs the operator's attention (pure;
docs/tls.md). The `certificates` role orders one certificate per project-environment that has
domains (all its names on one certificate: one order per domain set, whatever the number of
droplets), when there is none, when its names changed, 30 days before it expires or when the
operator asks; after a failed order it waits longer each time, so that the CA's rate limits
(Let's Encrypt: 5 failed validations per hostname an hour) are never reached.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from meshd.core.spec import DesiredState
from protocol.certs import Certificate, RenewRequest, cert_key

LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
DAY_S = 24 * 3600.0
RENEW_BEFORE_S = 30 * DAY_S
CRITICAL_WITHIN_S = 7 * DAY_S  # a critical alert, once a day, while it is not renewed
ALERT_EVERY_S = DAY_S
BACKOFF_BASE_S = 300.0  # 5 min, 10, 20, 40, ...: five failures take over two hours
BACKOFF_MAX_S = 12 * 3600.0


@dataclass(frozen=True, slots=True)
class Wanted:
    """A project-environment's domains, which one certificate covers."""

    project: str
    env: str
    domains: tuple[str, ...]  # sorted

    @property
    def key(self) -> str:
        return cert_key(self.project, self.env)

    @property
    def name(self) -> str:
        return f"{self.project}-{self.env}"

    @property
    def key_secret(self) -> str:
        """The mesh secret that holds the certificate's private key."""
        return f"tls_key-{self.project}-{self.env}"


def default_directory(provider: Mapping[str, Any]) -> str:
    """The ACME directory when the deployment config names none (`MeshConfig.provider`):
    Let's Encrypt where the droplets have public addresses (DigitalOcean itself); none on a
    local mesh or a stand-in of the cloud, which Let's Encrypt could never reach."""
    config = provider.get("config") or {}
    if provider.get("name") == "digitalocean" and not config.get("api_url"):
        return LETS_ENCRYPT
    return ""


NO_DIRECTORY = (
    "no ACME directory: this mesh's droplets are not on the Internet, so Let's Encrypt "
    "cannot reach them; name one in the deployment config's `acme.directory`"
)


def wanted(state: DesiredState | None) -> list[Wanted]:
    """Every project-environment with domains, by name."""
    if state is None:
        return []
    found = [
        Wanted(project.name, env, tuple(sorted(domains)))
        for project in state.projects
        for env, domains in project.domains.items()
        if domains
    ]
    return sorted(found, key=lambda w: (w.project, w.env))


def due(
    want: Wanted, cert: Certificate | None, renew: RenewRequest | None, now: float
) -> str | None:
    """Why `want` must be ordered now, or None: no certificate yet, its names changed, it
    expires within RENEW_BEFORE_S, or the operator asked since it was issued. After failures
    nothing is due before `next_attempt_at`, unless the operator asked after the last one."""
    asked_at = renew.asked_at if renew is not None else 0.0
    asked = renew is not None and (cert is None or asked_at > cert.issued_at)
    waiting = cert is not None and cert.failures > 0 and now < cert.next_attempt_at
    if waiting and not (asked and cert is not None and asked_at > cert.last_attempt_at):
        return None
    if cert is None or not cert.issued:
        return "no certificate yet"
    if tuple(sorted(cert.covers)) != want.domains:
        return "its domains changed"
    if now >= cert.not_after - RENEW_BEFORE_S:
        return f"it expires in {days_left(cert, now)} days"
    if asked:
        return "renewal asked for"
    return None


def backoff(failures: int) -> float:
    """Seconds before the next attempt after `failures` failed ones in a row (at least 1)."""
    return min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2.0 ** min(max(failures, 1) - 1, 32))


def days_left(cert: Certificate, now: float) -> int:
    return max(0, math.floor((cert.not_after - now) / DAY_S))


def needs_alert(cert: Certificate, now: float) -> bool:
    """Issued, within CRITICAL_WITHIN_S of its end and not alerted about for a day."""
    return (
        cert.issued
        and now >= cert.not_after - CRITICAL_WITHIN_S
        and now - cert.alerted_at >= ALERT_EVERY_S
    )


def attention(cert: Certificate | None, now: float) -> str | None:
    """What the operator should know of a certificate (`meshctl status`), or None when it is
    valid for more than RENEW_BEFORE_S and its last order went well."""
    if cert is None or not cert.issued:
        if cert is not None and cert.last_error:
            return f"pending: {cert.last_error}"
        return "pending: served over plain HTTP until it is issued"
    left = cert.not_after - now
    if left <= 0:
        return "expired"
    if cert.last_error:
        return f"renewal failing ({days_left(cert, now)} days left): {cert.last_error}"
    if left <= RENEW_BEFORE_S:
        return f"expires in {days_left(cert, now)} days; renewal due"
    return None


def state_of(cert: Certificate | None, now: float) -> str:
    """One word for a table: pending, valid, renewing, failing, expiring, expired."""
    if cert is None or not cert.issued:
        failed = cert is not None and cert.last_error not in ("", NO_DIRECTORY)
        return "failing" if failed else "pending"
    if cert.not_after <= now:
        return "expired"
    if cert.last_error:
        return "failing"
    if cert.not_after - now <= CRITICAL_WITHIN_S:
        return "expiring"
    if cert.not_after - now <= RENEW_BEFORE_S:
        return "renewing"
    return "valid"


def points_elsewhere(resolved: Mapping[str, Iterable[str] | str], entry: str) -> dict[str, str]:
    """The domains whose DNS does not lead to the entry address, with what it says instead
    (`resolved`: domain -> its addresses, or why it did not resolve)."""
    found: dict[str, str] = {}
    for domain, addresses in sorted(resolved.items()):
        if isinstance(addresses, str):
            found[domain] = addresses
            continue
        listed = sorted(set(addresses))
        if entry not in listed:
            shown = ", ".join(listed) or "no address"
            found[domain] = f"resolves to {shown}, not the entry address {entry}"
    return found
