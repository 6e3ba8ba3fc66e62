"""Certificates of the mesh's domains on the wire (KV `mesh_certs`, docs/tls.md), written as
protocol.messages says.

`cert.<project>.<env>` holds a project-environment's `Certificate`: the chain the CA issued
(public), which mesh secret holds its key (the key itself is sealed like any mesh secret), and
how the last order went. `challenge.<token>` holds an HTTP-01 key authorization while an order
waits for the CA to fetch it (public by design: the CA reads it over plain HTTP).
`renew.<project>.<env>` holds a `RenewRequest` from `meshctl certs renew`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from protocol.base import Message
from protocol.errors import InvalidNameError
from protocol.subjects import token


@dataclass(frozen=True, slots=True, kw_only=True)
class Certificate(Message):
    """A project-environment's certificate and how ordering it went. `domains` are the names
    asked for last; `covers` those the issued `chain` (PEM, leaf first) is valid for: the two
    differ while an order for a changed list of names is under way. `key_secret` is the mesh
    secret holding the chain's private key, at `key_version`."""

    KIND: ClassVar[str] = "certificate"

    project: str
    env: str
    domains: tuple[str, ...]
    covers: tuple[str, ...] = ()
    chain: str = ""
    issuer: str = ""
    not_before: float = 0.0
    not_after: float = 0.0
    key_secret: str = ""
    key_version: int = 0
    issued_at: float = 0.0  # 0: none issued yet
    renewals: int = 0
    last_attempt_at: float = 0.0
    last_error: str = ""  # of the last attempt; empty when it succeeded
    failures: int = 0  # attempts that failed in a row
    next_attempt_at: float = 0.0  # no attempt before (the CA's rate limits)
    alerted_at: float = 0.0  # the last critical alert about its expiry
    fence: int = 0

    @property
    def issued(self) -> bool:
        return bool(self.chain)


@dataclass(frozen=True, slots=True, kw_only=True)
class RenewRequest(Message):
    """The operator asks for a new certificate now (`meshctl certs renew`), whatever the
    backoff after failures."""

    KIND: ClassVar[str] = "certificate_renew_request"

    asked_at: float
    asked_by: str


CERTIFICATES = "cert.*.*"
CHALLENGE_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,128}")  # base64url, as ACME writes tokens


def cert_key(project: str, env: str) -> str:
    """Key of a project-environment's certificate in `mesh_certs`: `cert.<project>.<env>`."""
    return f"cert.{token(project, 'project')}.{token(env, 'environment')}"


def renew_key(project: str, env: str) -> str:
    """Key of a request to renew it now: `renew.<project>.<env>`."""
    return f"renew.{token(project, 'project')}.{token(env, 'environment')}"


def challenge_key(challenge_token: str) -> str:
    """Key of an HTTP-01 key authorization in `mesh_certs`: `challenge.<token>`."""
    if not CHALLENGE_TOKEN.fullmatch(challenge_token):
        raise InvalidNameError("challenge token", challenge_token, "is not base64url")
    return f"challenge.{challenge_token}"
