"""When the `certificates` role orders (pure, meshd.core.certs): one certificate per
project-environment with domains; ordered when there is none, its names changed, it ends
within 30 days or the operator asked; after failures not before the backoff, unless asked
again; a critical alert within 7 days, once a day; what `meshctl status` calls attention."""

from __future__ import annotations

from dataclasses import replace

import pytest

from meshd.core.certs import (
    BACKOFF_BASE_S,
    BACKOFF_MAX_S,
    DAY_S,
    LETS_ENCRYPT,
    NO_DIRECTORY,
    Wanted,
    attention,
    backoff,
    default_directory,
    due,
    needs_alert,
    points_elsewhere,
    state_of,
    wanted,
)
from meshd.core.spec import DesiredState, ProjectSpec
from protocol.certs import Certificate, RenewRequest

NOW = 1_800_000_000.0
WANT = Wanted("shop", "prod", ("shop.example.com", "www.shop.example.com"))


def issued(days_left: float = 60, **more: object) -> Certificate:
    fields: dict[str, object] = {
        "project": "shop", "env": "prod", "domains": WANT.domains, "covers": WANT.domains,
        "chain": "-----BEGIN CERTIFICATE-----", "not_before": NOW - DAY_S,
        "not_after": NOW + days_left * DAY_S, "issued_at": NOW - DAY_S,
    }  # fmt: skip
    fields.update(more)
    return Certificate(**fields)  # type: ignore[arg-type]


def test_one_certificate_per_project_environment_with_domains_its_names_sorted() -> None:
    state = DesiredState(
        projects=(
            ProjectSpec(
                name="shop",
                servers=1,
                master_size="s",
                web_size="s",
                services=(),
                domains={
                    "uat": ("uat.shop.example.com",),
                    "prod": ("www.shop.example.com", "shop.example.com"),
                },
            ),
            ProjectSpec(name="blog", servers=1, master_size="s", web_size="s", services=()),
        )  # fmt: skip
    )
    found = wanted(state)
    assert [(w.project, w.env, w.domains) for w in found] == [
        ("shop", "prod", ("shop.example.com", "www.shop.example.com")),
        ("shop", "uat", ("uat.shop.example.com",)),
    ]
    assert (found[0].key, found[0].name, found[0].key_secret) == (
        "cert.shop.prod", "shop-prod", "tls_key-shop-prod",
    )  # fmt: skip
    assert wanted(None) == []


@pytest.mark.parametrize(
    ("cert", "renew", "reason"),
    [
        (None, None, "no certificate yet"),
        (issued(), None, None),
        (issued(covers=("shop.example.com",)), None, "its domains changed"),
        (issued(days_left=29.5), None, "it expires in 29 days"),
        (issued(days_left=31), None, None),
        (issued(), RenewRequest(asked_at=NOW - 10, asked_by="op"), "renewal asked for"),
        # asked before this certificate was issued: done already
        (issued(), RenewRequest(asked_at=NOW - 2 * DAY_S, asked_by="op"), None),
    ],
)
def test_an_order_is_due_for_a_reason(
    cert: Certificate | None, renew: RenewRequest | None, reason: str | None
) -> None:
    assert due(WANT, cert, renew, NOW) == reason


def test_after_a_failure_nothing_is_due_before_the_backoff_unless_asked_again() -> None:
    failing = issued(days_left=10, failures=2, last_error="refused",
                     last_attempt_at=NOW - 60, next_attempt_at=NOW + 540)  # fmt: skip
    assert due(WANT, failing, None, NOW) is None
    assert due(WANT, failing, None, NOW + 600) == "it expires in 9 days"
    earlier = RenewRequest(asked_at=NOW - 120, asked_by="op")  # before the failed attempt
    assert due(WANT, failing, earlier, NOW) is None
    again = RenewRequest(asked_at=NOW - 10, asked_by="op")
    assert due(WANT, failing, again, NOW) == "it expires in 10 days"
    never = Certificate(project="shop", env="prod", domains=WANT.domains, failures=1,
                        last_attempt_at=NOW - 5, next_attempt_at=NOW + 295)  # fmt: skip
    assert due(WANT, never, None, NOW) is None


def test_backoff_doubles_from_five_minutes_to_twelve_hours() -> None:
    assert [backoff(n) for n in (1, 2, 3, 4)] == [BACKOFF_BASE_S * f for f in (1, 2, 4, 8)]
    assert backoff(0) == BACKOFF_BASE_S
    assert backoff(40) == BACKOFF_MAX_S
    # Let's Encrypt allows 5 failed validations per hostname an hour: never reached.
    assert sum(backoff(n) for n in range(1, 5)) > 3600


def test_a_critical_alert_within_seven_days_once_a_day() -> None:
    assert not needs_alert(issued(days_left=8), NOW)
    assert needs_alert(issued(days_left=6.5), NOW)
    assert not needs_alert(issued(days_left=6.5, alerted_at=NOW - 3600), NOW)
    assert needs_alert(issued(days_left=6.5, alerted_at=NOW - DAY_S), NOW)
    pending = Certificate(project="shop", env="prod", domains=WANT.domains)
    assert not needs_alert(pending, NOW)


def test_attention_and_state_say_what_the_operator_should_know() -> None:
    assert attention(issued(), NOW) is None and state_of(issued(), NOW) == "valid"
    assert "plain HTTP" in str(attention(None, NOW)) and state_of(None, NOW) == "pending"
    refused = Certificate(project="shop", env="prod", domains=WANT.domains, last_error="no")
    assert attention(refused, NOW) == "pending: no"
    assert state_of(refused, NOW) == "failing"
    nowhere = replace(refused, last_error=NO_DIRECTORY)  # a local mesh without a directory
    assert state_of(nowhere, NOW) == "pending" and NO_DIRECTORY in str(attention(nowhere, NOW))
    assert attention(issued(days_left=20), NOW) == "expires in 20 days; renewal due"
    assert state_of(issued(days_left=20), NOW) == "renewing"
    assert state_of(issued(days_left=3), NOW) == "expiring"
    failing = issued(days_left=20, last_error="rate limited")
    assert attention(failing, NOW) == "renewal failing (20 days left): rate limited"
    assert attention(issued(days_left=-1), NOW) == "expired"
    assert state_of(issued(days_left=-1), NOW) == "expired"


def test_domains_that_do_not_lead_to_the_entry_are_named_with_what_they_say() -> None:
    found = points_elsewhere(
        {
            "a.example.com": ["203.0.113.7"],
            "b.example.com": ["203.0.113.9", "203.0.113.7"],
            "c.example.com": ["198.51.100.1"],
            "d.example.com": "does not resolve (NXDOMAIN)",
            "e.example.com": [],
        },  # fmt: skip
        "203.0.113.7",
    )
    assert found == {
        "c.example.com": "resolves to 198.51.100.1, not the entry address 203.0.113.7",
        "d.example.com": "does not resolve (NXDOMAIN)",
        "e.example.com": "resolves to no address, not the entry address 203.0.113.7",
    }


def test_lets_encrypt_is_the_default_only_on_digitalocean_itself() -> None:
    assert default_directory({"name": "digitalocean", "config": {}}) == LETS_ENCRYPT
    stand_in = {"name": "digitalocean", "config": {"api_url": "http://127.0.0.1:9/"}}
    assert default_directory(stand_in) == ""
    assert default_directory({"name": "local"}) == ""
    assert default_directory({}) == ""
