"""When datastores are backed up, which backups go, and what their keys say (pure)."""

from __future__ import annotations

import time

from meshd.agent.state_documents import read_document, state_document
from meshd.agent.store import Received
from meshd.cli.status import backups_view
from meshd.core.backup_policy import (
    DAY_S,
    HOUR_S,
    MESH,
    MESH_PARTS,
    SCHEDULES,
    BackupName,
    Schedule,
    backup_key,
    backup_summary,
    datastore_schedules,
    due,
    expired,
    newest,
    overdue,
    parse_backup_key,
    schedule_of,
)
from plugins.backups import check_key
from protocol import subjects
from protocol.backups import BackupOrderAnswer, ListedBackup
from protocol.codec import encode
from tests.support.factories import allocation
from tests.support.memstore import MemoryStore

NOW = 1_796_162_400.0  # 2026-12-01 22:00 UTC


def name(at: float, service: str = "database", env: str = "prod") -> BackupName:
    found = parse_backup_key(backup_key(service, "shop", env, service, at, "ab12"))
    assert found is not None
    return found


def test_a_key_names_the_datastore_and_the_time_and_is_a_valid_target_key() -> None:
    key = backup_key("database", "shop", "prod", "database", NOW, "ab12")
    assert key == "database/shop/prod/database/20261201T220000Z-ab12.enc"
    assert check_key("objects", key) == key
    parsed = parse_backup_key(key)
    assert parsed is not None
    assert (parsed.kind, parsed.datastore, parsed.at) == (
        "database",
        ("shop", "prod", "database"),
        NOW,
    )
    assert parse_backup_key("staging/restore-1.enc") is None
    assert parse_backup_key(key + ".partial") is None


def test_a_datastore_is_due_every_six_hours_and_overdue_after_twice_that() -> None:
    schedule = SCHEDULES["database"]
    assert due(None, NOW, schedule)
    assert not due(name(NOW - 5 * HOUR_S), NOW, schedule)
    assert due(name(NOW - 6 * HOUR_S), NOW, schedule)
    assert not overdue(name(NOW - 11 * HOUR_S), 0.0, NOW, schedule)
    assert overdue(name(NOW - 13 * HOUR_S), 0.0, NOW, schedule)
    assert not overdue(None, NOW - HOUR_S, NOW, schedule)  # just appeared: not yet
    assert overdue(None, NOW - 13 * HOUR_S, NOW, schedule)


def test_retention_deletes_what_is_past_fourteen_days_but_never_the_newest() -> None:
    old = [name(NOW - d * DAY_S) for d in (20, 15, 13, 1)]
    assert [n.at for n in expired(old, NOW)] == [NOW - 20 * DAY_S, NOW - 15 * DAY_S]
    alone = [name(NOW - 30 * DAY_S, env="test")]
    assert expired(alone, NOW) == []  # its only backup: kept until a newer one is stored
    both = old + alone
    assert newest(both)[("shop", "test", "database")] == alone[0]
    assert len(expired(both, NOW)) == 2


def test_a_project_schedule_replaces_the_seed_s_interval_or_retention_or_both() -> None:
    seed = SCHEDULES["database"]
    assert schedule_of("database") == seed == schedule_of("redis")
    assert schedule_of("database", every_s=HOUR_S) == Schedule(HOUR_S, seed.keep_s)
    assert schedule_of("redis", keep_s=30 * DAY_S) == Schedule(seed.every_s, 30 * DAY_S)
    assert schedule_of("database", 2 * HOUR_S, DAY_S) == Schedule(2 * HOUR_S, DAY_S)
    hourly = schedule_of("database", every_s=HOUR_S)
    assert due(name(NOW - HOUR_S), NOW, hourly)
    assert overdue(name(NOW - 3 * HOUR_S), 0.0, NOW, hourly)
    assert not overdue(name(NOW - 3 * HOUR_S), 0.0, NOW, seed)


def test_each_datastore_s_schedule_is_the_one_its_allocation_carries() -> None:
    found = datastore_schedules(
        [
            allocation(service="database", service_kind="database", backup_every_s=HOUR_S),
            allocation(service="redis", service_kind="redis", backup_keep_s=DAY_S),
            allocation(env="test", service="database", service_kind="database"),
            allocation(service="backend", service_kind="web"),
        ]
    )
    assert found == {
        ("shop", "prod", "database"): Schedule(HOUR_S, 14 * DAY_S),
        ("shop", "prod", "redis"): Schedule(6 * HOUR_S, DAY_S),
        ("shop", "test", "database"): SCHEDULES["database"],
    }


def test_retention_is_each_datastore_s_own_and_its_kind_s_for_the_others() -> None:
    prod = [name(NOW - d * DAY_S) for d in (40, 20, 3, 1)]
    test = [name(NOW - d * DAY_S, env="test") for d in (20, 15, 3)]
    keep = {("shop", "prod", "database"): 30 * DAY_S, ("shop", "test", "database"): 2 * DAY_S}
    assert [(n.env, round((NOW - n.at) / DAY_S)) for n in expired(prod + test, NOW, keep)] == [
        ("prod", 40),
        ("test", 20),
        ("test", 15),
    ]  # test's newest (3 days) stays, past its 2 days
    others = {("shop", "uat", "database"): DAY_S}  # another datastore's: the seed's here
    assert [round((NOW - n.at) / DAY_S) for n in expired(prod, NOW, others)] == [40, 20]


def test_status_shows_each_datastore_with_its_newest_backup_and_whether_it_is_late() -> None:
    names = [
        name(NOW - 20 * HOUR_S),
        name(NOW - 2 * HOUR_S, service="redis"),
        name(NOW - 3 * HOUR_S, env="uat"),
    ]
    seed = SCHEDULES["database"]
    rows = backup_summary(
        {
            ("shop", "prod", "database"): seed,
            ("shop", "prod", "redis"): seed,
            ("shop", "test", "database"): seed,
            ("shop", "uat", "database"): schedule_of("database", every_s=HOUR_S),
        },
        names,
        NOW,
    )
    assert [(r["service"], r["env"], r["age_s"], r["overdue"]) for r in rows] == [
        ("database", "prod", 20 * HOUR_S, True),
        ("redis", "prod", 2 * HOUR_S, False),
        ("database", "test", None, False),
        ("database", "uat", 3 * HOUR_S, True),  # hourly: late after two hours
    ]


async def test_the_mesh_state_document_holds_every_bucket_but_the_secrets() -> None:
    store = MemoryStore()
    await store.put(subjects.DESIRED_BUCKET, subjects.DESIRED_KEY, b"published")
    await store.put(subjects.SECRETS_BUCKET, "value.shop.prod.api_key", b"sealed")
    state = read_document(await state_document(store, "state", "demo"))
    assert state["buckets"][subjects.DESIRED_BUCKET] == {subjects.DESIRED_KEY: b"published"}
    assert subjects.SECRETS_BUCKET not in state["buckets"]
    kept = read_document(await state_document(store, "secrets", "demo"))
    assert list(kept["buckets"]) == [subjects.SECRETS_BUCKET]
    assert (kept["kind"], kept["mesh"]) == ("secrets", "demo")
    name = parse_backup_key(backup_key("state", MESH, MESH, "state", NOW, "ab12"))
    assert name is not None and name.datastore == MESH_PARTS["state"]


async def test_status_says_overdue_on_the_schedule_each_allocation_carries() -> None:
    store = MemoryStore()
    now = time.time()
    ago = now - 3 * HOUR_S  # late hourly, on time on the seed's 6 hours
    listed = tuple(
        ListedBackup(key=backup_key("database", "shop", env, "database", ago, "ab12"), size=1,
                     sha256="", created_at=ago)
        for env in ("prod", "test")
    )  # fmt: skip

    async def leader(message: Received) -> None:
        await message.respond(encode(BackupOrderAnswer(listed=listed, target="objects")))

    await store.subscribe(subjects.BACKUP_ORDERS, leader)
    database = {"service": "database", "service_kind": "database"}
    rows = await backups_view(
        store,
        {
            "shop.prod.database": allocation(**database, backup_every_s=HOUR_S),
            "shop.test.database": allocation(**database, env="test"),
            "shop.prod.backend": allocation(),
        },
    )
    assert [(r["env"], r["overdue"]) for r in rows] == [("prod", True), ("test", False)]
