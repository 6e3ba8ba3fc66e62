"""Push webhooks from hosted repositories (GitHub, Gitea), which the entry address accepts at
`/_mesh/hooks/git/<project>`: whether a delivery is signed with the project's webhook secret,
and which branch it moved. Pure; the HTTP handler answers 401 for a `SignatureError`, 400 for
a `PayloadError`, and deploys the `PushedBranch` (the shape `pushes` gives for the
post-receive hook) when there is one.

Both hosts sign the raw body with HMAC-SHA256 keyed on the secret. GitHub sends
`X-Hub-Signature-256: sha256=<hex>` (docs.github.com, "Validating webhook deliveries"); Gitea
sends the same header and also `X-Gitea-Signature: <hex>` (docs.gitea.com/usage/webhooks and
go-gitea/gitea services/webhook/deliver.go). The event's name is in `X-GitHub-Event` (Gitea
sends it too) or `X-Gitea-Event`; only `push` deploys: a `ping` on creating the hook is
answered with nothing to do. In a push payload `ref` is the full ref, `after` the new commit
(all zeros and `deleted: true` when the ref was deleted), and who pushed is `pusher.name` on
GitHub, `pusher.login` on Gitea, and `sender.login` on both (docs.github.com, "Webhook events
and payloads", push; the Gitea page above). GitHub also offers the content type
`application/x-www-form-urlencoded` (its form's default), where the JSON is the `payload`
field of a form; the signature is of the body as sent, either way.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

from meshd.core.pushes import PushedBranch, branch_of, is_sha, is_zero
from protocol.errors import MeshError

SIGNATURE_HEADER = "X-Hub-Signature-256"  # `sha256=<hex>`: GitHub and Gitea
GITEA_SIGNATURE_HEADER = "X-Gitea-Signature"  # bare hex: Gitea (and Gogs) only
EVENT_HEADERS = ("X-GitHub-Event", "X-Gitea-Event", "X-Gogs-Event")
SIGNATURE_PREFIX = "sha256="
PUSH_EVENT = "push"
FORM_TYPE = "application/x-www-form-urlencoded"


class WebhookError(MeshError, ValueError):
    """A webhook delivery that is refused; `reason` says why, without any secret."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"webhook delivery: {reason}")


class SignatureError(WebhookError):
    """The delivery is not signed with the project's secret (missing, malformed or wrong
    signature): it may not come from the repository's host, so nothing is done (HTTP 401)."""


class PayloadError(WebhookError):
    """A signed delivery whose body is not a push payload this module can read (HTTP 400)."""


def signature_of(body: bytes, secret: bytes) -> str:
    """The hex HMAC-SHA256 of `body` keyed on `secret`, as both hosts compute it."""
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def header(headers: Mapping[str, str], name: str) -> str | None:
    """The value of header `name`, matched without regard to case as HTTP names are."""
    wanted = name.lower()
    return next((v for k, v in headers.items() if k.lower() == wanted), None)


def verify_signature(headers: Mapping[str, str], body: bytes, secret: bytes) -> None:
    """Return if `body` is signed with `secret`, else raise `SignatureError`.
    `X-Hub-Signature-256` is checked when present, else `X-Gitea-Signature`."""
    if not secret:
        # An empty key is a key anybody has: refuse rather than accept every signer.
        raise SignatureError("the project has no webhook secret; set one first")
    given = header(headers, SIGNATURE_HEADER)
    if given is not None:
        if not given.startswith(SIGNATURE_PREFIX):
            raise SignatureError(f"{SIGNATURE_HEADER} does not start with {SIGNATURE_PREFIX!r}")
        given = given.removeprefix(SIGNATURE_PREFIX)
    else:
        given = header(headers, GITEA_SIGNATURE_HEADER)
    if given is None:
        raise SignatureError(f"no {SIGNATURE_HEADER} or {GITEA_SIGNATURE_HEADER} header")
    expected = signature_of(body, secret)
    # Bytes, not str: compare_digest refuses non-ASCII str, and a header may hold anything.
    if not hmac.compare_digest(expected.encode(), given.strip().lower().encode()):
        raise SignatureError("the signature does not match the body and the project's secret")


def event_of(headers: Mapping[str, str]) -> str | None:
    """The delivery's event name (`push`, `ping` ...), None when no header names one."""
    return next((v for n in EVENT_HEADERS if (v := header(headers, n)) is not None), None)


def payload_of(headers: Mapping[str, str], body: bytes) -> bytes:
    """The JSON of a delivery: the body, or its form's `payload` field when `Content-Type`
    says it is a form. Raises `PayloadError` for a form without one."""
    content_type = (header(headers, "Content-Type") or "").partition(";")[0].strip().lower()
    if content_type != FORM_TYPE:
        return body
    try:
        fields = parse_qs(body.decode(), strict_parsing=True, max_num_fields=16)
    except (UnicodeDecodeError, ValueError) as err:
        raise PayloadError(f"the body is not a form: {err}") from err
    payload = fields.get("payload")
    if not payload or len(payload) != 1:
        raise PayloadError("the form has no single 'payload' field")
    return payload[0].encode()


def parse_push_payload(body: bytes) -> PushedBranch | None:
    """The branch a push payload moved; None for a tag, a deletion or another kind of ref.
    Raises `PayloadError` when `body` is not a JSON push payload."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise PayloadError(f"the body is not JSON: {err}") from err
    if not isinstance(payload, dict):
        raise PayloadError("the body is not a JSON object")
    ref, after = payload.get("ref"), payload.get("after")
    if not isinstance(ref, str) or not ref:
        raise PayloadError("the payload has no 'ref' string; is this a push event?")
    if not isinstance(after, str) or not is_sha(after):
        raise PayloadError(f"'after' is {_shown(after)}, not a 40 or 64 hex digit commit")
    branch = branch_of(ref)
    if branch is None or payload.get("deleted") is True or is_zero(after):
        return None
    before = payload.get("before")
    if not isinstance(before, str) or not is_sha(before):
        before = "0" * len(after)  # unknown: read as a new branch, which deploys the same
    return PushedBranch(branch=branch, sha=after, before=before, pusher=pusher_of(payload))


def pusher_of(payload: Mapping[str, Any]) -> str:
    """Who pushed: `pusher.name` (GitHub), `pusher.login` (Gitea), else `sender.login`."""
    for key, field in (("pusher", "name"), ("pusher", "login"), ("sender", "login")):
        person = payload.get(key)
        if isinstance(person, dict) and isinstance(person.get(field), str) and person[field]:
            return str(person[field])
    return ""


def pushed_branch(headers: Mapping[str, str], body: bytes, secret: bytes) -> PushedBranch | None:
    """What a delivery asks to deploy: verified first (`SignatureError`), then read
    (`PayloadError`); None when it is signed but deploys nothing (a ping, a tag, a deletion)."""
    verify_signature(headers, body, secret)
    event = event_of(headers)
    if event is not None and event != PUSH_EVENT:
        return None
    return parse_push_payload(payload_of(headers, body))


def _shown(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
