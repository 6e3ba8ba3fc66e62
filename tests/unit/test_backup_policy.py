"""When datastores are backed up, which backups go, and what their keys say (pure)."""

from __future__ import annotations

from meshd.agent.state_documents import read_document, state_document
from meshd.core.backup_policy import (
    DAY_S,
    HOUR_S,
    MESH,
    MESH_PARTS,
    SCHEDULES,
    BackupName,
    backup_key,
    backup_summary,
    due,
    expired,
    newest,
    overdue,
    parse_backup_key,
)
from plugins.backups import check_key
from protocol import subjects
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


def test_status_shows_each_datastore_with_its_newest_backup_and_whether_it_is_late() -> None:
    names = [name(NOW - 20 * HOUR_S), name(NOW - 2 * HOUR_S, service="redis")]
    rows = backup_summary(
        [("shop", "prod", "database", "database"), ("shop", "prod", "redis", "redis"),
         ("shop", "test", "database", "database")],
        names,
        NOW,
    )  # fmt: skip
    assert [(r["service"], r["env"], r["age_s"], r["overdue"]) for r in rows] == [
        ("database", "prod", 20 * HOUR_S, True),
        ("redis", "prod", 2 * HOUR_S, False),
        ("database", "test", None, False),
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
