"""Fixtures for tests that talk to one real nats-server with JetStream: `nats_server`, and
`store`, a connection as the mesh's `agent` user with the buckets and streams created."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from meshd.agent.store import Store
from meshd.agent.store.jetstream import NatsStore
from tests.support.nats import NatsServer, running_nats


async def connect(server: NatsServer, name: str = "test") -> Store:
    store = await NatsStore.connect(
        [server.url], "agent", server.agent_password, name=name, timeout=3
    )
    await store.ensure(replicas=1)
    return store


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    directory = tmp_path / "nats"
    directory.mkdir()
    with running_nats(directory) as server:
        yield server


@pytest.fixture
async def store(nats_server: NatsServer) -> AsyncIterator[Store]:
    store = await connect(nats_server)
    yield store
    await store.close()
