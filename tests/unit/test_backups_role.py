"""The `backups` leader: each datastore backed up, alerted and pruned on its own schedule
(its project's, carried by its allocation); and when the target cannot keep a backup (S3
down, full): the backup is failed (an event, and the datastore tried again later), and the
copy its agent staged in the mesh's object store is not left there, where no listing would
show it and no retention would ever delete it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from meshd.agent.lease import Term
from meshd.agent.meshview import MeshView
from meshd.core.backup_policy import DAY_S, HOUR_S, backup_key
from meshd.roles.backups import Backups
from meshd.roles.backups.loading import BackupFailed, Loader
from meshd.roles.backups.targets import Targets
from plugins.backups import StoredBackup, TargetUnavailable
from protocol import subjects
from protocol.backups import BackupAnswer, BackupRequest
from protocol.codec import decode
from protocol.messages import InstanceState
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
    role = Backups(
        store, await serving(), "master", None, tmp_path / "work", "demo", lambda _: None
    )  # type: ignore[arg-type]
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


async def test_a_retake_that_finds_the_rebuilt_datastore_not_back_is_owed_again_a_few_times(
    tmp_path: Path,
) -> None:
    """The droplet is back (no failure recorded) but its datastore still starts: the retake
    fails and is owed again, RETAKES times at most; then failures alert as any other."""
    from meshd.roles.backups import RETAKES

    store = MemoryStore()
    role = Backups(
        store, await serving(), "master", None, tmp_path / "work", "demo", lambda _: None
    )  # type: ignore[arg-type]
    role.targets = Targets(store, lambda _: None)
    role.loader = Loader(store, role.view, "master", None, role.targets, tmp_path / "work")  # type: ignore[arg-type]

    async def starting(subject: str, data: bytes, droplet: str) -> BackupAnswer:
        return BackupAnswer(error="the database system is starting up")

    role.loader.ask = starting  # type: ignore[method-assign]
    database = allocation(service="database", service_kind="database", droplets=("web1",))
    datastore = ("shop", "prod", "database")
    term = Term("backups", 4, time.monotonic() + 600)
    with pytest.raises(BackupFailed):
        await role.take(term, database, "scheduled")  # web1 up: a plain failure, not owed
    assert datastore not in role._owed
    for _ in range(RETAKES):
        role._owed[datastore] = 0.0
        with pytest.raises(BackupFailed):
            await role.take(term, database, "again")
        assert datastore in role._owed  # still owed: tried again a minute later
    with pytest.raises(BackupFailed):
        await role.take(term, database, "again")
    assert datastore not in role._owed  # given up: its failures alert from now on


async def serving(state: InstanceState = InstanceState.RUNNING) -> MeshView:
    """A view in which web1 reports prod's database in `state`."""
    view = MeshView()
    database = factories.instance(service="database", state=state)
    await view.set_nodes({"web1": factories.node("web1", database)})
    return view


async def test_a_datastore_its_droplet_reports_not_running_is_not_asked_and_owed_again(
    tmp_path: Path,
) -> None:
    """web1 was rebuilt and restores its database from the snapshot: no dump is asked for
    (it would only fail), no alert is due, the backup is taken again a minute later."""
    store = MemoryStore()
    role = Backups(
        store,
        await serving(InstanceState.STARTING),
        "master",
        None,
        tmp_path,
        "demo",
        lambda _: None,
    )  # type: ignore[arg-type]
    role.targets = Targets(store, lambda _: None)
    role.loader = Loader(store, role.view, "master", None, role.targets, tmp_path)  # type: ignore[arg-type]
    asked: list[str] = []

    async def agent(subject: str, data: bytes, droplet: str) -> BackupAnswer:
        asked.append(subject)
        return BackupAnswer(plain_bytes=9, stored_bytes=11)

    role.loader.ask = agent  # type: ignore[method-assign]
    database = allocation(service="database", service_kind="database", droplets=("web1",))
    term = Term("backups", 4, time.monotonic() + 600)
    with pytest.raises(BackupFailed) as failed:
        await role.take(term, database, "asked by ops")
    assert str(failed.value) == (
        "backup of shop.prod.database failed: shop.prod.database is not running on web1 just "
        "now (starting); taken again once it runs"
    )
    assert asked == []
    assert ("shop", "prod", "database") in role._owed
    await role.view.set_nodes({"web1": factories.node("web1")})  # no instance of it reported
    with pytest.raises(BackupFailed, match="is not running on web1 yet"):
        await role.take(term, database, "again")
    # Rebuilt again: its card (written first) says a new life, the report is the last one's.
    await role.view.set_nodes({"web1": (await serving()).nodes["web1"]})
    await role.view.set_cards({"web1": factories.card("web1", incarnation=2)})
    with pytest.raises(BackupFailed, match="is not running on web1 yet"):
        await role.take(term, database, "again")
    assert asked == []
    await role.view.set_cards({"web1": factories.card("web1", incarnation=1)})
    await role.view.set_failures({"web1": factories.failure("web1")})  # being recovered
    with pytest.raises(BackupFailed, match="web1 failed; the mesh is recovering it"):
        await role.take(term, database, "again")
    assert asked == []
    await role.view.set_failures({})
    assert await role.take(term, database, "again")
    assert asked == [subjects.backup("web1")]


class Listing:
    """A target that lists `keys` and keeps what is deleted."""

    name = "objects"

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys
        self.deleted: list[str] = []

    async def list(self, prefix: str = "") -> list[StoredBackup]:
        return [StoredBackup(key=k, size=1, sha256="", created_at=0.0) for k in self.keys]

    async def delete(self, key: str) -> None:
        self.deleted.append(key)

    async def close(self) -> None:
        pass


async def test_each_datastore_is_backed_up_alerted_and_pruned_on_its_project_s_schedule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """prod's project backs up hourly and keeps 2 days, test runs on the seed's schedule:
    both newest backups are 2.5 h old, so prod's alone is due and overdue; of the 3-day-old
    backups, prod's alone is past its retention."""
    now = time.time()
    ages = {"prod": (2.5 * HOUR_S, 3 * DAY_S), "test": (2.5 * HOUR_S, 3 * DAY_S)}
    keys = {
        (env, age): backup_key("database", "shop", env, "database", now - age, "ab12")
        for env, both in ages.items()
        for age in both
    }
    target = Listing(list(keys.values()))
    view = MeshView()
    # prod's database still starts: not taken (no failure, no alert) until it runs.
    starting = factories.instance(service="database", state=InstanceState.STARTING)
    running = factories.instance(service="database", env="test")
    await view.set_nodes({"web1": factories.node("web1", starting, running)})
    await view.set_cards({"web1": factories.card("web1")})
    database = {"service": "database", "service_kind": "database", "droplets": ("web1",)}
    await view.set_allocations(
        {
            "shop.prod.database": allocation(
                **database, backup_every_s=HOUR_S, backup_keep_s=2 * DAY_S
            ),
            "shop.test.database": allocation(**database, env="test"),
        }
    )
    store = MemoryStore()
    role = Backups(store, view, "master", None, tmp_path / "work", "demo", lambda _: None)  # type: ignore[arg-type]
    role.targets = Targets(store, lambda _: None)
    taken: list[str] = []
    alerted: list[tuple[str, str]] = []

    async def kept() -> Any:
        return target

    async def take(term: Term, allocation: Any, why: str) -> str:
        taken.append(f"{allocation.env} {why}")
        return "taken"

    async def take_mesh(term: Term, kind: str, why: str = "scheduled") -> str:
        return kind

    async def alert(term: Term, subject: str, last: Any, problem: str) -> None:
        alerted.append((subject, problem))

    async def mesh_key(store: Any) -> object:
        return object()

    monkeypatch.setattr("meshd.roles.backups.mesh_public_key", mesh_key)
    role.targets.kept = kept  # type: ignore[method-assign]
    role.take = take  # type: ignore[method-assign]
    role.take_mesh = take_mesh  # type: ignore[method-assign]
    role._alert = alert  # type: ignore[method-assign]

    await role.check(Term("backups", 4, time.monotonic() + 600))
    assert taken == []
    await view.set_nodes({"web1": factories.node("web1", factories.instance(service="database"))})
    await role.check(Term("backups", 4, time.monotonic() + 600))

    assert taken == ["prod scheduled"]
    assert alerted == [("shop.prod.database", "overdue")]
    assert set(target.deleted) == {keys[("prod", 3 * DAY_S)]}  # by each pass: Listing keeps it
