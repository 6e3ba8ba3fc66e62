"""The `certificates` role against a real ACME CA (pebble), its HTTP-01 answers served by the
agent's own HTTP endpoint from the store (what the lb holder's nginx passes on): one order
per domain set, keys sealed to the mesh key and matching the chain, nothing ordered again
until due, a renewal on request, a refusal that keeps the certificate and backs off, no order
at all without a directory, and a critical alert within 7 days of the end, once a day."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from meshd.agent.api import create_app, serve
from meshd.agent.lease import Term
from meshd.agent.meshview import MeshView
from meshd.core.certs import BACKOFF_BASE_S, DAY_S, NO_DIRECTORY
from meshd.core.sealing import KeyPair, open_value
from meshd.core.spec import DesiredState, ProjectSpec
from meshd.core.tls_chain import describe, key_matches
from meshd.roles.certificates import ACCOUNT_KEY, Certificates
from protocol import subjects
from protocol.certs import Certificate, RenewRequest, cert_key, renew_key
from protocol.codec import decode, encode
from protocol.messages import NodeStatus, Notification
from protocol.secrets import MeshKey, SecretValue
from tests.support import free_port
from tests.support.memstore import MemoryStore
from tests.support.pebble import Pebble, running_pebble

DOMAINS = ("shop.meshd.test", "www.shop.meshd.test")
KEY = cert_key("shop", "prod")


def desired(acme: dict[str, str], notify: dict[str, object] | None = None) -> DesiredState:
    shop = ProjectSpec(name="shop", servers=1, master_size="s", web_size="s", services=(),
                       domains={"prod": DOMAINS})  # fmt: skip
    return DesiredState(projects=(shop,), acme=acme, notify=notify or {})


def acme_of(pebble: Pebble) -> dict[str, str]:
    return {"directory": pebble.directory, "email": "ops@meshd.test",
            "directory_ca": pebble.directory_ca.read_text()}  # fmt: skip


def term() -> Term:
    return Term("certificates", 7, time.monotonic() + 600)


async def with_mesh_key(store: MemoryStore) -> KeyPair:
    mesh = KeyPair.new()
    stored = MeshKey(public=mesh.public_text, fingerprint=mesh.fingerprint, created_by="t",
                     created_at=time.time())  # fmt: skip
    await store.put(subjects.SECRETS_BUCKET, subjects.MESH_KEY, encode(stored))
    return mesh


async def opened(store: MemoryStore, mesh: KeyPair, name: str) -> tuple[bytes, int]:
    key = subjects.secret_value_key(name)
    entry = await store.get(subjects.SECRETS_BUCKET, key)
    assert entry is not None and entry.value
    value = decode(entry.value, SecretValue)
    return open_value(mesh, key, value.version, value.sealed), value.version


async def record(store: MemoryStore) -> Certificate:
    entry = await store.get(subjects.CERTS_BUCKET, KEY)
    assert entry is not None and entry.value
    return decode(entry.value, Certificate)


def named(store: MemoryStore, name: str) -> list[dict[str, object]]:
    return [e.detail for e in store.events if e.name == name]


@pytest.fixture
async def answering(tmp_path: Path) -> AsyncIterator[tuple[MemoryStore, Pebble]]:
    """A store, the agent's HTTP endpoint serving its challenges, and pebble asking there."""
    store = MemoryStore()
    node = NodeStatus(droplet="master", address="127.0.0.1", incarnation=1, size="s",
                      roles=(), instances=(), updated_at=time.time())  # fmt: skip
    port = free_port()
    runner = await serve(create_app(lambda: node, lambda: True, store=lambda: store),
                         "127.0.0.1", port)  # fmt: skip
    try:
        with running_pebble(tmp_path / "pebble", "127.0.0.1", port) as pebble:
            yield store, pebble
    finally:
        await runner.cleanup()


async def test_one_order_sealed_keys_nothing_again_until_asked_then_a_renewal(
    answering: tuple[MemoryStore, Pebble],
) -> None:
    store, pebble = answering
    mesh = await with_mesh_key(store)
    view = MeshView()
    view.state = desired(acme_of(pebble))
    role = Certificates(store, view, "master", "m", lambda _: None)

    await role.round(term())
    first = await record(store)
    assert first.issued and tuple(first.covers) == DOMAINS and first.fence == 7
    assert first.key_secret == "tls_key-shop-prod" and first.renewals == 0
    key, version = await opened(store, mesh, first.key_secret)
    assert key_matches(first.chain, key) and version == first.key_version == 1
    assert b"PRIVATE KEY" in (await opened(store, mesh, ACCOUNT_KEY))[0]
    assert first.not_after - time.time() > 60 * DAY_S  # pebble's 90 days
    assert describe(first.chain).issuer.startswith("Pebble")
    assert await store.entries(subjects.CERTS_BUCKET, "challenge.>") == {}
    (issued,) = named(store, "certificate_issued")
    assert issued["domains"] == list(DOMAINS)

    await role.round(term())  # nothing is due
    assert pebble.issued() == 1 and await record(store) == first

    asked = RenewRequest(asked_at=time.time(), asked_by="op")
    await store.put(subjects.CERTS_BUCKET, renew_key("shop", "prod"), encode(asked))
    await role.round(term())
    second = await record(store)
    assert second.chain != first.chain and second.renewals == 1 and second.key_version == 2
    assert key_matches(second.chain, (await opened(store, mesh, second.key_secret))[0])
    assert await store.get(subjects.CERTS_BUCKET, renew_key("shop", "prod")) is None
    assert len(named(store, "certificate_renewed")) == 1 and pebble.issued() == 2


async def test_a_refusal_keeps_the_certificate_records_why_and_waits(
    answering: tuple[MemoryStore, Pebble],
) -> None:
    store, pebble = answering
    await with_mesh_key(store)
    view = MeshView()
    view.state = desired(acme_of(pebble))
    role = Certificates(store, view, "master", "m", lambda _: None)
    await role.round(term())
    good = await record(store)

    pebble.answer_with("127.0.0.254")  # the names lead nowhere now
    asked = RenewRequest(asked_at=time.time(), asked_by="op")
    await store.put(subjects.CERTS_BUCKET, renew_key("shop", "prod"), encode(asked))
    before = time.time()
    await role.round(term())
    failed = await record(store)
    assert (failed.chain, failed.not_after) == (good.chain, good.not_after)
    assert failed.failures == 1 and "validation failed" in failed.last_error
    assert before + BACKOFF_BASE_S - 5 < failed.next_attempt_at < time.time() + BACKOFF_BASE_S + 5
    (event,) = named(store, "certificate_failed")
    assert event["serving"] == "the old certificate" and event["retry_in_s"] == BACKOFF_BASE_S

    await role.round(term())  # within the backoff: no second attempt
    assert len(named(store, "certificate_failed")) == 1 and pebble.issued() == 1


async def test_without_a_directory_nothing_is_ordered_and_the_reason_is_kept_once(
    tmp_path: Path,
) -> None:
    store = MemoryStore()
    await with_mesh_key(store)
    view = MeshView()
    view.state = desired({"directory": "", "email": "", "directory_ca": ""})
    role = Certificates(store, view, "master", "m", lambda _: None, default_directory="")
    await role.round(term())
    await role.round(term())
    pending = await record(store)
    assert not pending.issued and pending.last_error == NO_DIRECTORY
    # Not a failure: a directory named later is ordered from at once.
    assert pending.failures == 0 and pending.next_attempt_at == 0
    assert len(named(store, "certificate_failed")) == 1
    assert await store.get(subjects.SECRETS_BUCKET, subjects.secret_value_key(ACCOUNT_KEY)) is None


async def test_within_seven_days_a_critical_alert_goes_out_once_a_day(
    answering: tuple[MemoryStore, Pebble],
) -> None:
    store, pebble = answering
    await with_mesh_key(store)
    view = MeshView()
    view.state = desired(acme_of(pebble), notify={"email": {"to": ["ops@meshd.test"]}})
    role = Certificates(store, view, "master", "m", lambda _: None)
    await role.round(term())
    # Five days left and the renewal failing (not due again for an hour).
    soon = time.time() + 5 * DAY_S
    failing = replace(await record(store), not_after=soon, failures=3, last_error="refused",
                      last_attempt_at=time.time(), next_attempt_at=time.time() + 3600)  # fmt: skip
    await store.put(subjects.CERTS_BUCKET, KEY, encode(failing))

    await role.round(term())
    await role.round(term())
    assert await store.queued(subjects.NOTIFY_STREAM) == 1
    queue = await store.work_queue(subjects.NOTIFY_STREAM, subjects.NOTIFY_SUBJECTS, "t")
    taken = await queue.take(1.0)
    assert taken is not None
    mail = decode(taken.data, Notification)
    assert mail.purpose == "critical" and "shop-prod expires in 4 days" in mail.subject
    assert (await record(store)).alerted_at > 0
    assert named(store, "certificate_expiring") == [{"days_left": 4}]
    assert pebble.issued() == 1


def test_the_agent_serves_no_challenge_it_does_not_hold() -> None:
    store = MemoryStore()
    node = NodeStatus(droplet="master", address="127.0.0.1", incarnation=1, size="s",
                      roles=(), instances=(), updated_at=time.time())  # fmt: skip
    app = create_app(lambda: node, lambda: True, store=lambda: store)

    async def check() -> None:
        from aiohttp.test_utils import TestClient, TestServer  # noqa: PLC0415

        await store.put(subjects.CERTS_BUCKET, "challenge.tok-1_A", b"tok-1_A.thumb")
        async with TestClient(TestServer(app)) as client:
            found = await client.get("/.well-known/acme-challenge/tok-1_A")
            assert (found.status, await found.text()) == (200, "tok-1_A.thumb")
            assert (await client.get("/.well-known/acme-challenge/other")).status == 404
            assert (await client.get("/.well-known/acme-challenge/a.b")).status == 404

    asyncio.run(check())
