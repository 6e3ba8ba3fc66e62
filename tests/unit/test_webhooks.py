"""Push webhooks from GitHub and Gitea: a delivery is taken only when signed with the project's
secret (HMAC-SHA256 of the raw body), then read into the pushed branch; tags, deletions and
pings deploy nothing. The deliveries are a table in `tests/cases/webhook_pushes.json`, shaped
like the hosts' documented payloads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshd.agent.hooks import Refusals
from meshd.core.pushes import PushedBranch
from meshd.core.webhooks import (
    PayloadError,
    SignatureError,
    parse_push_payload,
    payload_of,
    pushed_branch,
    signature_of,
    verify_signature,
)

TABLE: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "cases" / "webhook_pushes.json").read_text(encoding="utf-8")
)
SECRET = b"project webhook secret"
BODY = b'{"ref": "refs/heads/main"}'


def github_headers(body: bytes, event: str = "push", secret: bytes = SECRET) -> dict[str, str]:
    return {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        "X-Hub-Signature-256": "sha256=" + signature_of(body, secret),
        "Content-Type": "application/json",
    }


def gitea_headers(body: bytes, event: str = "push", secret: bytes = SECRET) -> dict[str, str]:
    signature = signature_of(body, secret)
    return {
        "X-Gitea-Event": event,
        "X-GitHub-Event": event,
        "X-Gitea-Signature": signature,
        "X-Hub-Signature-256": "sha256=" + signature,
    }


def test_the_signature_is_githubs_documented_test_value() -> None:
    # docs.github.com, "Validating webhook deliveries", "Testing the webhook payload validation".
    signature = signature_of(b"Hello, World!", b"It's a Secret to Everybody")
    assert signature == "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    verify_signature({"X-Hub-Signature-256": f"sha256={signature}"}, b"Hello, World!",
                     b"It's a Secret to Everybody")  # fmt: skip


@pytest.mark.parametrize("case", sorted(TABLE["deliveries"]))
def test_a_signed_delivery_gives_the_branch_it_pushed(case: str) -> None:
    spec = TABLE["deliveries"][case]
    body = json.dumps(spec["payload"], indent=2).encode()
    headers = (gitea_headers if case.startswith("gitea") else github_headers)(body, spec["event"])
    pushed = pushed_branch(headers, body, SECRET)
    want = spec["pushed"]
    if want is None:
        assert pushed is None
        return
    assert pushed == PushedBranch(want["branch"], want["sha"], want["before"], want["pusher"])
    assert pushed.created is want["created"]


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Gitea-Signature": signature_of(BODY, SECRET)},  # Gitea's own header alone
        {"x-hub-signature-256": "sha256=" + signature_of(BODY, SECRET)},  # any case of name
        {"X-Hub-Signature-256": "sha256=" + signature_of(BODY, SECRET).upper() + "\r\n"},
    ],
)
def test_either_hosts_signature_header_is_taken(headers: dict[str, str]) -> None:
    verify_signature(headers, BODY, SECRET)


@pytest.mark.parametrize(
    ("headers", "body", "secret", "says"),
    [
        ({}, BODY, SECRET, "no X-Hub-Signature-256 or X-Gitea-Signature header"),
        (github_headers(BODY), BODY + b" ", SECRET, "does not match"),  # the body was altered
        (github_headers(BODY), BODY, b"another secret", "does not match"),
        (github_headers(BODY, secret=b"other"), BODY, SECRET, "does not match"),
        ({"X-Hub-Signature-256": signature_of(BODY, SECRET)}, BODY, SECRET, "'sha256='"),
        ({"X-Hub-Signature-256": "sha1=" + signature_of(BODY, SECRET)}, BODY, SECRET, "sha256"),
        ({"X-Hub-Signature-256": "sha256="}, BODY, SECRET, "does not match"),  # Gitea unkeyed
        ({"X-Hub-Signature-256": "sha256=\u00e9\u00e9"}, BODY, SECRET, "does not match"),
        ({"X-Gitea-Signature": ""}, BODY, SECRET, "does not match"),
        (github_headers(BODY, secret=b""), BODY, b"", "no webhook secret"),
        (
            # The GitHub header is checked when both are there: a right Gitea one is no help.
            {"X-Hub-Signature-256": "sha256=00", "X-Gitea-Signature": signature_of(BODY, SECRET)},
            BODY,
            SECRET,
            "does not match",
        ),
    ],
)
def test_a_delivery_not_signed_with_the_secret_is_refused(
    headers: dict[str, str], body: bytes, secret: bytes, says: str
) -> None:
    with pytest.raises(SignatureError, match=says) as caught:
        verify_signature(headers, body, secret)
    if secret:
        assert secret.decode() not in str(caught.value)  # never the key in a message


def test_the_signature_is_checked_before_anything_is_read() -> None:
    with pytest.raises(SignatureError):
        pushed_branch({"X-GitHub-Event": "ping"}, b"not json", SECRET)
    with pytest.raises(SignatureError):
        pushed_branch(github_headers(b"{}"), b"not json", SECRET)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe\x00", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b"{}", "no 'ref'"),
        (b'{"ref": 3, "after": "x"}', "no 'ref'"),
        (b'{"ref": "refs/heads/main"}', "'after' is null"),
        (b'{"ref": "refs/heads/main", "after": "HEAD"}', "'after' is \"HEAD\""),
        (b"[" * 100_000, "not JSON"),
    ],
)
def test_a_signed_body_that_is_not_a_push_payload_is_refused(body: bytes, says: str) -> None:
    with pytest.raises(PayloadError, match=says):
        pushed_branch(github_headers(body), body, SECRET)


def test_a_delivery_without_an_event_header_is_read_as_a_push() -> None:
    body = json.dumps(TABLE["deliveries"]["gitea_push"]["payload"]).encode()
    headers = {"X-Gitea-Signature": signature_of(body, SECRET)}
    pushed = pushed_branch(headers, body, SECRET)
    assert pushed is not None and pushed.branch == "develop"


def test_a_form_encoded_delivery_is_read_from_its_payload_field() -> None:
    payload = json.dumps(TABLE["deliveries"]["gitea_push"]["payload"])
    body = urlencode({"payload": payload}).encode()  # GitHub's form content type
    headers = github_headers(body) | {"Content-Type": "application/x-www-form-urlencoded"}
    pushed = pushed_branch(headers, body, SECRET)
    assert pushed is not None and pushed.branch == "develop"


@pytest.mark.parametrize(
    ("content_type", "body", "gives"),
    [
        ("application/json", b'{"a": 1}', b'{"a": 1}'),
        (None, b"payload=x", b"payload=x"),  # no content type: the body is the JSON
        ("Application/X-WWW-Form-Urlencoded; charset=utf-8", b"payload=%7B%7D", b"{}"),
        ("application/x-www-form-urlencoded", b"other=1", PayloadError),
        ("application/x-www-form-urlencoded", b"payload=1&payload=2", PayloadError),
        ("application/x-www-form-urlencoded", b"\xff=\xfe", PayloadError),
    ],
)
def test_the_payload_is_the_body_or_its_forms_field(
    content_type: str | None, body: bytes, gives: bytes | type[Exception]
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    if isinstance(gives, bytes):
        assert payload_of(headers, body) == gives
    else:
        with pytest.raises(gives):
            payload_of(headers, body)


def test_an_unreadable_before_reads_as_a_new_branch() -> None:
    after = "b" * 40
    pushed = parse_push_payload(json.dumps({"ref": "refs/heads/x", "after": after}).encode())
    assert pushed == PushedBranch("x", after, "0" * 40, "")


@given(st.binary(max_size=200), st.binary(min_size=1, max_size=40), st.integers(0, 199))
def test_any_change_to_a_signed_body_is_caught(body: bytes, secret: bytes, at: int) -> None:
    headers = github_headers(body, secret=secret)
    verify_signature(headers, body, secret)
    if body:
        changed = bytearray(body)
        changed[at % len(body)] ^= 0x01
        with pytest.raises(SignatureError):
            verify_signature(headers, bytes(changed), secret)


def test_refusals_become_events_once_a_minute_per_project_counting_those_left_out() -> None:
    refusals = Refusals(every=60.0)
    assert refusals.admit("shop", 0.0) == 0
    assert [refusals.admit("shop", t) for t in (1.0, 30.0, 59.9)] == [None, None, None]
    assert refusals.admit("blog", 30.0) == 0  # another project's own minute
    assert refusals.admit("shop", 60.0) == 3
    assert refusals.admit("shop", 200.0) == 0
