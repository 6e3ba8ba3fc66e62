"""The `logs` role against a real nats-server and the OpenSearch stand-in (sim/opensearch.py):
every line shipped reaches the index once, although the forwarder was cut off after OpenSearch
took a bulk and before it acknowledged the batches, and a second forwarder took over from the
consumer's position; a refusing cluster holds the lines back (an event says why, once) and they
arrive once it takes them; a wrong password is said as such."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from meshd.agent.lease import Term
from meshd.agent.store import Store
from meshd.roles.logs import LogForwarder
from protocol import subjects
from protocol.codec import encode
from protocol.logs import LogBatch, LogLine
from protocol.messages import Event
from sim.opensearch import OpenSearchStandIn
from tests.support.waiting import until

INDEX = "meshd-logs"
PASSWORD = "s3cret-of-the-cluster"


@pytest.fixture
def cluster() -> Iterator[OpenSearchStandIn]:
    stand_in = OpenSearchStandIn(user="meshd", password=PASSWORD).start()
    yield stand_in
    stand_in.stop()


def forwarder(store: Store, cluster: OpenSearchStandIn, password: str = PASSWORD) -> LogForwarder:
    settings = {"opensearch": {"url": cluster.url, "index": INDEX, "user": "meshd"}}
    view: Any = SimpleNamespace(state=SimpleNamespace(logs=settings))
    secrets = {"opensearch_password": password.encode()}
    return LogForwarder(store, view, "master", "mesh1", secrets.get, ack_wait=2.0)


async def ship(store: Store, batches: int, lines: int = 10, first: int = 0) -> list[str]:
    texts = []
    for b in range(first, first + batches):
        batch = LogBatch(
            droplet="web1",
            lines=tuple(LogLine(at=time.time(), text=f"line {b}.{i}") for i in range(lines)),
            project="shop",
            env="prod",
            service="backend",
            batch_id=f"web1-7-{b}",
        )
        await store.ship_logs(
            subjects.app_log("shop", "prod", "backend", "web1"), encode(batch), batch.batch_id
        )
        texts += [line.text for line in batch.lines]
    return texts


@contextlib.asynccontextmanager
async def leading(role: LogForwarder, fence: int):  # type: ignore[no-untyped-def]
    task = asyncio.create_task(role.lead(Term("logs", fence, time.monotonic() + 600)))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_every_line_reaches_the_index_once_across_a_forwarder_cut_off_mid_bulk(
    store: Store, cluster: OpenSearchStandIn
) -> None:
    shipped = await ship(store, 120)
    cluster.hold = 1.0  # stored, then a second before the answer: the cut falls in between
    async with leading(forwarder(store, cluster), fence=5):
        await until(lambda: cluster.writes >= 100, "a first bulk stored", 20)
    cut_off_after = cluster.writes
    cluster.hold = 0.0
    shipped += await ship(store, 30, first=120)  # more while no forwarder runs
    second = forwarder(store, cluster)
    async with leading(second, fence=9):
        # the batches of the bulk cut off come back once their ack wait is over
        resent = len(shipped) + cut_off_after
        await until(lambda: cluster.writes >= resent, "the bulk cut off sent again", 30)
        await asyncio.sleep(0.5)

    documents = cluster.documents(INDEX)
    # sent again, it replaced what it had stored instead of adding to it
    assert sorted(d["message"] for d in documents.values()) == sorted(shipped)
    assert cluster.writes == resent
    one = documents["web1-7-3-4"]
    assert one["message"] == "line 3.4"
    assert (one["project"], one["env"], one["service"], one["droplet"], one["mesh"]) == (
        "shop", "prod", "backend", "web1", "mesh1"
    )  # fmt: skip
    assert one["@timestamp"].endswith("+00:00")


async def test_a_refusing_cluster_holds_lines_back_then_takes_them_all(
    store: Store, cluster: OpenSearchStandIn
) -> None:
    shipped = await ship(store, 5)
    cluster.refuse_next(2, status=503)
    cluster.refuse_items(7)  # then a bulk taken but for seven lines (a full write queue)
    async with leading(forwarder(store, cluster), fence=3):
        await until(lambda: len(cluster.documents(INDEX)) == len(shipped), "every line", 30)

        async def said() -> list[Event]:  # events are recorded in the background
            events = [e for e in await store.recent_events(100) if e.subject == "opensearch"]
            return events if events and events[-1].name == "logs_forwarding" else []

        events = await until(said, "forwarding said again", 10)
    failed = [e for e in events if e.name == "logs_forward_failed"]
    assert failed and "503" in failed[0].detail["error"]
    assert failed[0].fence == 3
    assert cluster.bulk_requests >= 4


async def test_a_wrong_password_is_said_and_no_line_is_lost(
    store: Store, cluster: OpenSearchStandIn
) -> None:
    shipped = await ship(store, 3)
    async with leading(forwarder(store, cluster, password="not-it"), fence=4):
        await until(lambda: cluster.unauthorized >= 2, "a bulk request sent again", 10)
    assert cluster.documents(INDEX) == {}

    async def refusals() -> list[Event]:
        return [e for e in await store.recent_events(100) if e.name == "logs_forward_failed"]

    (failed,) = await until(refusals, "the refusal said", 10)
    assert "refused the login" in failed.detail["error"]
    assert "not-it" not in str(failed.detail) and PASSWORD not in str(failed.detail)
    async with leading(forwarder(store, cluster), fence=6):
        await until(lambda: len(cluster.documents(INDEX)) == len(shipped), "every line", 30)
