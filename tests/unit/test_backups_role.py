"""The `backups` leader when the target cannot keep a backup (S3 down, full): the backup is
failed (an event, and the datastore tried again later), and the copy its agent staged in the
mesh's object store is not left there, where no listing would show it and no retention
would ever delete it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from meshd.agent.lease import Term
from meshd.agent.meshview import MeshView
from meshd.roles.backups import Backups
from meshd.roles.backups.loading import BackupFailed, Loader
from meshd.roles.backups.targets import Targets
from plugins.backups import StoredBackup, TargetUnavailable
from protocol import subjects
from protocol.backups import BackupAnswer, BackupRequest
from protocol.codec import decode
from tests.support import factories
from tests.support.memstore import MemoryStore
from tests.support.reconciling import allocation


class Unreachable:
    """An S3 target whose service does not answer."""

    name = "s3"

    async def put(self, key: str, source: Path) -> StoredBackup:
        raise TargetUnavailable(f"store backup {key!r}", "s3", "connection refused")

    async def list(self, prefix: str = "") -> list[StoredBackup]:
        return []

    async def close(self) -> None:
        pass


async def test_a_backup_the_target_cannot_keep_fails_and_leaves_nothing_staged(
    tmp_path: Path,
) -> None:
    store = MemoryStore()
    role = Backups(store, MeshView(), "master", None, tmp_path / "work", "demo", lambda _: None)  # type: ignore[arg-type]
    role.targets = Targets(store, lambda _: None)
    role.loader = Loader(store, role.view, "master", None, role.targets, tmp_path / "work")  # type: ignore[arg-type]
    staged: list[str] = []

    async def agent(subject: str, data: bytes, droplet: str) -> BackupAnswer:  # as its agent does
        request = decode(data, BackupRequest)
        dump = tmp_path / "dump"
        dump.write_bytes(b"sealed dump")
        await role.targets.staging.put(request.key, dump)
        staged.append(request.key)
        return BackupAnswer(plain_bytes=9, stored_bytes=11)

    async def kept() -> Any:
        return Unreachable()

    role.loader.ask = agent  # type: ignore[method-assign]
    role.targets.kept = kept  # type: ignore[method-assign]
    database = allocation(service="database", service_kind="database", droplets=("web1",))
    term = Term("backups", 4, time.monotonic() + 600)

    with pytest.raises(BackupFailed, match="connection refused"):
        await role.take(term, database, "scheduled")

    assert len(staged) == 1
    assert await role.targets.staging.list() == []  # not left where nobody would prune it
    await asyncio.sleep(0.05)  # the events on their way
    failed = [e for e in store.events if e.name == "backup_failed"]
    assert [e.detail["key"] for e in failed] == staged and failed[0].fence == 4
    assert not [e for e in store.events if e.name == "backup_taken"]
    assert not store.objects.get(subjects.BACKUPS_STORE)


@pytest.mark.parametrize("how", ["failed", "restarted"])
async def test_a_droplet_that_dies_during_its_backup_is_not_waited_for(
    tmp_path: Path, how: str
) -> None:
    """Its dump died with it: the leader gives up at once instead of after the 15-minute
    timeout, which would hold every other backup and restore up."""
    store = MemoryStore()
    view = MeshView()
    await view.set_nodes({"web1": factories.node("web1", incarnation=3)})
    loader = Loader(store, view, "master", None, Targets(store, lambda _: None), tmp_path)  # type: ignore[arg-type]

    async def never(subject: str, data: bytes, timeout: float) -> bytes | None:
        await asyncio.sleep(3600)
        return None

    store.request = never  # type: ignore[method-assign]
    asking = asyncio.create_task(loader.ask(subjects.backup("web1"), b"", "web1"))
    await asyncio.sleep(0.05)
    assert not asking.done()
    if how == "failed":
        await view.set_failures({"web1": factories.failure("web1")})
    else:
        await view.set_nodes({"web1": factories.node("web1", incarnation=4)})
    answer = await asyncio.wait_for(asking, 5)
    assert answer.error == f"web1 {how} before it answered"
