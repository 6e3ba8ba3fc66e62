"""The store's object stores, on a real nats-server and on the in-memory store that unit tests
use: a file of several chunks goes in and comes out the same, an absent object is False and
leaves no file, listing leaves deleted objects out, and no nats error leaves the store."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshd.agent.store import Store, StoreUnavailable
from meshd.agent.store.jetstream import NatsStore
from protocol import subjects
from tests.support.jetstream import connect
from tests.support.memstore import MemoryStore
from tests.support.nats import running_nats

STORE = subjects.ARTIFACTS_STORE
MIB = 1024 * 1024


@pytest.fixture(params=["nats", "memory"])
async def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
        return
    directory = tmp_path / "nats"
    directory.mkdir()
    with running_nats(directory) as server:
        store = await connect(server)
        try:
            yield store
        finally:
            await store.close()


def random_file(path: Path, size: int) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


async def test_a_file_of_many_chunks_comes_back_the_same(any_store: Store, tmp_path: Path) -> None:
    digest = random_file(tmp_path / "in", 5 * MIB + 123)
    stored = await any_store.put_object(STORE, digest, tmp_path / "in", {"service": "backend"})
    assert stored == 5 * MIB + 123
    assert await any_store.get_object(STORE, digest, tmp_path / "out")
    assert hashlib.sha256((tmp_path / "out").read_bytes()).hexdigest() == digest
    assert await any_store.object_names(STORE) == {digest: 5 * MIB + 123}


async def test_an_absent_object_is_false_and_leaves_no_file(
    any_store: Store, tmp_path: Path
) -> None:
    assert await any_store.object_names(STORE) == {}
    assert not await any_store.get_object(STORE, "nothing", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    await any_store.delete_object(STORE, "nothing")  # no error


async def test_deleted_objects_are_gone_and_the_others_stay(
    any_store: Store, tmp_path: Path
) -> None:
    (tmp_path / "empty").write_bytes(b"")
    await any_store.put_object(STORE, "empty", tmp_path / "empty")
    random_file(tmp_path / "small", 1000)
    await any_store.put_object(STORE, "small", tmp_path / "small")
    await any_store.put_object(STORE, "small", tmp_path / "small")  # again: replaced
    assert await any_store.object_names(STORE) == {"empty": 0, "small": 1000}
    await any_store.delete_object(STORE, "small")
    await any_store.delete_object(STORE, "small")
    assert await any_store.object_names(STORE) == {"empty": 0}
    assert not await any_store.get_object(STORE, "small", tmp_path / "out")
    assert await any_store.get_object(STORE, "empty", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == b""


async def test_the_object_store_is_file_backed_and_gains_replicas_like_buckets(
    tmp_path: Path,
) -> None:
    with running_nats(tmp_path) as server:
        store = await connect(server)
        assert isinstance(store, NatsStore)
        try:
            info = await store.moves().info(f"OBJ_{STORE}")
            assert info["config"]["storage"] == "file"
            await store.ensure(replicas=1)  # again: nothing changes, nothing fails
        finally:
            await store.close()


async def test_without_a_server_objects_are_store_unavailable(tmp_path: Path) -> None:
    random_file(tmp_path / "in", 100)
    with running_nats(tmp_path) as server:
        store = await connect(server)
        try:
            server.kill()
            for call in (
                store.put_object(STORE, "x", tmp_path / "in"),
                store.get_object(STORE, "x", tmp_path / "out"),
                store.object_names(STORE),
                store.delete_object(STORE, "x"),
            ):
                with pytest.raises(StoreUnavailable):
                    await call
            assert not (tmp_path / "out").exists()
        finally:
            await store.close()
