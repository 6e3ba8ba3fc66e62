"""Delivering a deploy's artifact to a droplet before its instance starts: fetched once per
digest however many instances wait for it, checked against its digest before the runtime
loads it, never left on disk, and waited for (not failed) while the mesh's store is away."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from meshd.agent.reconciler.artifacts import FETCH_DIR, PARTIAL, ArtifactDelivery
from meshd.agent.reconciler.instances import NotReady
from plugins.runtimes import ArtifactError, InstanceStartError
from protocol import subjects
from tests.support.factories import allocation
from tests.support.memstore import MemoryStore

CONTENT = b"an image archive, or a tarball of a build context" * 1000
DIGEST = hashlib.sha256(CONTENT).hexdigest()
KEY = "shop.prod.backend"


class FakeRuntime:
    """The artifact abilities of a runtime: what it holds, what it loaded, and in what order."""

    def __init__(self) -> None:
        self.held: set[str] = set()
        self.loaded: list[tuple[str, str | None, bytes]] = []
        self.failure: str | None = None
        self.loading = asyncio.Event()  # set: a load may finish

    async def has_artifact(self, digest: str, image: str | None) -> bool:
        return digest in self.held

    async def load_artifact(self, digest: str, image: str | None, path: Path) -> None:
        await self.loading.wait()
        if self.failure is not None:
            raise ArtifactError(f"load artifact {digest[:12]}", self.failure)
        self.loaded.append((digest, image, path.read_bytes()))
        self.held.add(digest)


@pytest.fixture
def runtime() -> FakeRuntime:
    made = FakeRuntime()
    made.loading.set()
    return made


@pytest.fixture
def store(tmp_path: Path) -> MemoryStore:
    store = MemoryStore()
    store.objects[subjects.ARTIFACTS_STORE][DIGEST] = CONTENT
    return store


def delivery(runtime: FakeRuntime, tmp_path: Path, store: MemoryStore | None) -> ArtifactDelivery:
    made = ArtifactDelivery(runtime, "web1", tmp_path)  # type: ignore[arg-type]
    made.store = store
    return made


def left_files(tmp_path: Path) -> list[str]:
    directory = tmp_path / FETCH_DIR
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


async def test_an_allocation_without_artifact_needs_nothing(
    runtime: FakeRuntime, tmp_path: Path
) -> None:
    await delivery(runtime, tmp_path, None).ensure(KEY, allocation())
    assert runtime.loaded == []


async def test_an_artifact_is_fetched_checked_loaded_and_its_file_removed(
    runtime: FakeRuntime, store: MemoryStore, tmp_path: Path
) -> None:
    wanted = allocation(artifact=DIGEST, image="shop-backend:abc", release=3)
    await delivery(runtime, tmp_path, store).ensure(KEY, wanted)

    assert runtime.loaded == [(DIGEST, "shop-backend:abc", CONTENT)]
    assert left_files(tmp_path) == []
    (event,) = store.events
    assert (event.name, event.actor, event.subject, event.fence) == (
        "artifact_fetched",
        "web1",
        subjects.alloc_key("shop", "prod", "backend"),
        0,
    )
    assert event.detail["digest"] == DIGEST
    assert event.detail["bytes"] == len(CONTENT)
    assert event.detail["release"] == 3


async def test_an_artifact_the_runtime_has_is_not_fetched(
    runtime: FakeRuntime, store: MemoryStore, tmp_path: Path
) -> None:
    runtime.held.add(DIGEST)
    await delivery(runtime, tmp_path, store).ensure(KEY, allocation(artifact=DIGEST))
    assert (store.object_reads, runtime.loaded, store.events) == ([], [], [])


async def test_instances_that_need_the_same_artifact_wait_for_one_fetch(
    runtime: FakeRuntime, store: MemoryStore, tmp_path: Path
) -> None:
    runtime.loading.clear()
    deliveries = delivery(runtime, tmp_path, store)
    wanted = allocation(artifact=DIGEST)
    waiting = [
        asyncio.create_task(deliveries.ensure(f"{KEY}{suffix}", wanted)) for suffix in ("", ".1")
    ]
    while not store.object_reads:
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)
    assert not any(task.done() for task in waiting)  # both wait for the load of the one fetch
    runtime.loading.set()
    await asyncio.gather(*waiting)
    assert store.object_reads == [(subjects.ARTIFACTS_STORE, DIGEST)]
    assert len(runtime.loaded) == 1


async def test_without_a_store_an_instance_waits_for_its_artifact(
    runtime: FakeRuntime, store: MemoryStore, tmp_path: Path
) -> None:
    deliveries = delivery(runtime, tmp_path, None)
    with pytest.raises(NotReady, match="waiting for the mesh"):
        await deliveries.ensure(KEY, allocation(artifact=DIGEST))
    store.unavailable = True
    deliveries.store = store
    with pytest.raises(NotReady, match="waiting for the artifact store"):
        await deliveries.ensure(KEY, allocation(artifact=DIGEST))
    store.unavailable = False
    await deliveries.ensure(KEY, allocation(artifact=DIGEST))
    assert len(runtime.loaded) == 1
    assert left_files(tmp_path) == []


async def test_bytes_that_do_not_match_the_digest_are_refused_and_never_loaded(
    runtime: FakeRuntime, store: MemoryStore, tmp_path: Path
) -> None:
    store.objects[subjects.ARTIFACTS_STORE][DIGEST] = CONTENT + b"tampered"
    with pytest.raises(InstanceStartError, match=f"artifact {DIGEST[:12]} refused") as raised:
        await delivery(runtime, tmp_path, store).ensure(KEY, allocation(artifact=DIGEST))
    assert raised.value.key == KEY
    assert runtime.loaded == []
    assert left_files(tmp_path) == []
    assert store.events == []


async def test_an_artifact_missing_from_the_store_fails_the_start(
    runtime: FakeRuntime, store: MemoryStore, tmp_path: Path
) -> None:
    missing = "0" * 64
    with pytest.raises(InstanceStartError, match="not in the artifact store"):
        await delivery(runtime, tmp_path, store).ensure(KEY, allocation(artifact=missing))
    assert left_files(tmp_path) == []


async def test_an_artifact_the_runtime_cannot_load_fails_the_start_with_its_reason(
    runtime: FakeRuntime, store: MemoryStore, tmp_path: Path
) -> None:
    runtime.failure = "the archive holds no image shop-backend:abc"
    with pytest.raises(InstanceStartError, match="holds no image") as raised:
        await delivery(runtime, tmp_path, store).ensure(KEY, allocation(artifact=DIGEST))
    assert raised.value.reason.startswith(f"load artifact {DIGEST[:12]}")
    assert left_files(tmp_path) == []


def test_files_of_a_fetch_an_earlier_agent_left_are_removed(
    runtime: FakeRuntime, tmp_path: Path
) -> None:
    (tmp_path / FETCH_DIR).mkdir()
    (tmp_path / FETCH_DIR / f"{DIGEST}{PARTIAL}").write_bytes(b"half")
    delivery(runtime, tmp_path, None)
    assert left_files(tmp_path) == []
