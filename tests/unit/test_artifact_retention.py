"""Artifacts beyond retention are deleted: those of the newest releases of every environment
and those that run are kept, the others go with an event each; other objects stay."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from meshd.agent.lease import Term
from meshd.roles.builder.retention import delete_unkept
from protocol import subjects
from protocol.codec import encode
from protocol.releases import Artifact, DeployAction, Release, ReleaseStatus
from tests.support.memstore import MemoryStore

pytestmark = pytest.mark.unit


def digest(n: int) -> str:
    return f"{n:064x}"


async def test_only_recent_releases_and_running_artifacts_are_kept(tmp_path: Path) -> None:
    store = MemoryStore()
    blob = tmp_path / "blob"
    blob.write_bytes(b"x")
    for n in range(1, 9):
        artifact = Artifact("backend", digest(n), "process", 1, f"src{n}")
        release = Release(
            project="shop", env="uat", number=n, action=DeployAction.DEPLOY,
            status=ReleaseStatus.LIVE, ref="main", sha="a" * 40, requested_by="ana",
            created_at=n, updated_at=n, request_id=str(n), artifacts=(artifact,),
            log=f"log-shop.uat.{n}",
        )  # fmt: skip
        await store.create(subjects.RELEASES_BUCKET, subjects.release_key("shop", "uat", n),
                           encode(release))  # fmt: skip
        await store.put_object(subjects.ARTIFACTS_STORE, digest(n), blob)
        await store.put_object(subjects.ARTIFACTS_STORE, f"log-shop.uat.{n}", blob)
    await store.put_object(subjects.ARTIFACTS_STORE, "log-shop-uat-1", blob)
    term = Term("builder", 3, time.monotonic() + 600)

    deleted = await delete_unkept(store, ["shop"], {digest(2)}, term, "master", keep=5)

    logs = {f"log-shop.uat.{n}" for n in range(4, 9)}
    assert deleted == [digest(1), digest(3), "log-shop.uat.1", "log-shop.uat.2", "log-shop.uat.3"]
    left = await store.object_names(subjects.ARTIFACTS_STORE)
    assert set(left) == {digest(n) for n in (2, 4, 5, 6, 7, 8)} | logs | {"log-shop-uat-1"}
    events = [e for e in await store.recent_events(50) if e.name == "artifact_deleted"]
    assert sorted(e.detail["digest"] for e in events) == sorted(deleted)
    assert all(e.fence == 3 for e in events)
