"""Backup targets against real servers: the `s3` target against SeaweedFS's S3 gateway (a round
trip of 20 MiB in parts, prefixes, deletes, a missing key, a wrong secret refused without
showing it, an object tampered with behind the target's back refused with both digests) and
the `objects` target against a real nats-server's object store (round trip, tampering, a full
store, a store not created yet)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.js.api import ObjectStoreConfig, StorageType

from meshd.agent.store import Store
from plugins.backups import (
    BackupCorrupt,
    BackupNotFound,
    BackupTarget,
    BackupTargetContext,
    BackupTargetError,
    TargetAccessDenied,
    TargetFull,
    TargetUnavailable,
    load_target,
)
from protocol import subjects
from tests.support import free_port
from tests.support.nats import NatsServer
from tests.support.seaweedfs import SeaweedS3, seaweedfs  # noqa: F401

MIB = 1024 * 1024


def random_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for start in range(0, size, MIB):
            chunk = os.urandom(min(MIB, size - start))
            out.write(chunk)
            digest.update(chunk)
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    with path.open("rb") as source:
        return hashlib.file_digest(source, "sha256").hexdigest()


def s3_target(server: SeaweedS3, prefix: str, secret_key: str | None = None) -> BackupTarget:
    secret = (secret_key or server.secret_key).encode()
    ctx = BackupTargetContext(
        config=server.target_config(prefix),
        secrets=lambda name: secret if name == "s3_secret_key" else None,
    )
    return load_target("s3", ctx)


@pytest.fixture
async def target(seaweedfs: SeaweedS3) -> AsyncIterator[BackupTarget]:  # noqa: F811
    """An `s3` target under a prefix of this test's own in the session's bucket."""
    target = s3_target(seaweedfs, f"test-{secrets.token_hex(4)}")
    yield target
    await target.close()
    await target.close()  # again: nothing happens


# --- s3 ----------------------------------------------------------------------------------


async def test_a_backup_of_20_mib_comes_back_the_same(target: BackupTarget, tmp_path: Path) -> None:
    digest = await asyncio.to_thread(random_file, tmp_path / "in", 20 * MIB + 5)
    key = "db/shop/prod/database/20261201-2200-1.dump.enc"
    stored = await target.put(key, tmp_path / "in")
    assert (stored.key, stored.size, stored.sha256) == (key, 20 * MIB + 5, digest)
    assert await target.list() == [stored]
    fetched = await target.get(key, tmp_path / "out")
    assert (fetched.key, fetched.size, fetched.sha256) == (key, stored.size, digest)
    assert file_digest(tmp_path / "out") == digest


async def test_list_by_prefix_is_sorted_and_deletes_are_gone(
    target: BackupTarget, tmp_path: Path
) -> None:
    random_file(tmp_path / "in", 1000)
    keys = ["db/shop/uat/b.enc", "state/mesh.enc", "db/blog/prod/a.enc", "db/shop/prod/c.enc"]
    for key in keys:
        await target.put(key, tmp_path / "in")
    assert [b.key for b in await target.list("db/shop/")] == [keys[3], keys[0]]
    assert [b.key for b in await target.list()] == sorted(keys)
    await target.delete("state/mesh.enc")
    await target.delete("state/mesh.enc")  # gone already: no error
    assert [b.key for b in await target.list("state/")] == []
    assert len(await target.list()) == 3


async def test_a_missing_backup_is_not_found_and_leaves_no_file(
    target: BackupTarget, tmp_path: Path
) -> None:
    with pytest.raises(BackupNotFound) as caught:
        await target.get("db/none.enc", tmp_path / "out")
    assert caught.value.key == "db/none.enc"
    assert list(tmp_path.iterdir()) == []


async def test_a_wrong_secret_key_is_refused_without_showing_it(
    seaweedfs: SeaweedS3,  # noqa: F811
    tmp_path: Path,
) -> None:
    wrong = f"wrong-{secrets.token_urlsafe(16)}"
    target = s3_target(seaweedfs, "test-wrong", secret_key=wrong)
    random_file(tmp_path / "in", 1000)
    try:
        for attempt in (target.put("a.enc", tmp_path / "in"), target.list()):
            with pytest.raises(TargetAccessDenied) as caught:
                await attempt
            assert isinstance(caught.value, BackupTargetError)
            assert "SignatureDoesNotMatch" in str(caught.value)
            for text in (str(caught.value), repr(caught.value), repr(caught.value.__cause__)):
                assert wrong not in text and seaweedfs.secret_key not in text
    finally:
        await target.close()


async def test_a_tampered_backup_is_refused_with_both_digests(
    seaweedfs: SeaweedS3,  # noqa: F811
    tmp_path: Path,
) -> None:
    prefix = f"test-{secrets.token_hex(4)}"
    target = s3_target(seaweedfs, prefix)
    try:
        random_file(tmp_path / "in", 3 * MIB)
        stored = await target.put("db/x.enc", tmp_path / "in")
        evil = b"not the backup"
        client = seaweedfs.client()
        await asyncio.to_thread(
            client.put_object,
            Bucket=seaweedfs.bucket,
            Key=f"{prefix}/db/x.enc",
            Body=evil,
            Metadata={"sha256": stored.sha256},
        )
        client.close()
        (tmp_path / "restore").mkdir()
        with pytest.raises(BackupCorrupt) as caught:
            await target.get("db/x.enc", tmp_path / "restore" / "x.enc")
        assert caught.value.expected == stored.sha256
        assert caught.value.actual == hashlib.sha256(evil).hexdigest()
        assert list((tmp_path / "restore").iterdir()) == []
    finally:
        await target.close()


async def test_an_endpoint_that_does_not_answer_is_target_unavailable(
    seaweedfs: SeaweedS3,  # noqa: F811
) -> None:
    ctx = BackupTargetContext(
        config=seaweedfs.target_config() | {"endpoint": f"http://127.0.0.1:{free_port()}"},
        secrets=lambda name: b"x",
    )
    target = load_target("s3", ctx)
    try:
        with pytest.raises(TargetUnavailable, match="no answer from http://127.0.0.1"):
            await target.list()
    finally:
        await target.close()


# --- objects, on a real nats-server ------------------------------------------------------


async def limit_backups_store(server: NatsServer, max_bytes: int) -> None:
    """The store schema made `mesh_backups` unlimited: made again, smaller (as a full disk)."""
    nc = await nats.connect(server.url, user="agent", password=server.agent_password)
    try:
        js = nc.jetstream()
        await js.delete_object_store(subjects.BACKUPS_STORE)
        config = ObjectStoreConfig(storage=StorageType.FILE, max_bytes=max_bytes)
        await js.create_object_store(subjects.BACKUPS_STORE, config)
    finally:
        await nc.close()


async def test_the_objects_target_keeps_backups_in_jetstream(
    nats_server: NatsServer, store: Store, tmp_path: Path
) -> None:
    target = load_target("objects", BackupTargetContext(objects=store))
    digest = random_file(tmp_path / "in", 3 * MIB + 1)
    stored = await target.put("db/shop/prod/a.enc", tmp_path / "in")
    await target.put("state/mesh.enc", tmp_path / "in")
    assert [b.key for b in await target.list("db/")] == ["db/shop/prod/a.enc"]
    assert await target.get("db/shop/prod/a.enc", tmp_path / "out") == stored
    assert file_digest(tmp_path / "out") == digest
    await target.delete("db/shop/prod/a.enc")
    assert [b.key for b in await target.list()] == ["state/mesh.enc"]


async def test_the_objects_target_refuses_an_object_replaced_behind_its_back(
    nats_server: NatsServer, store: Store, tmp_path: Path
) -> None:
    target = load_target("objects", BackupTargetContext(objects=store))
    random_file(tmp_path / "in", 2 * MIB)
    stored = await target.put("db/x.enc", tmp_path / "in")
    (name,) = await store.object_names(subjects.BACKUPS_STORE)
    (tmp_path / "evil").write_bytes(b"evil")
    await store.put_object(subjects.BACKUPS_STORE, name, tmp_path / "evil")
    with pytest.raises(BackupCorrupt) as caught:
        await target.get("db/x.enc", tmp_path / "restore.enc")
    assert caught.value.expected == stored.sha256
    assert not (tmp_path / "restore.enc").exists()


async def test_a_full_object_store_is_target_full(
    nats_server: NatsServer, store: Store, tmp_path: Path
) -> None:
    await limit_backups_store(nats_server, max_bytes=2 * MIB)
    target = load_target("objects", BackupTargetContext(objects=store))
    random_file(tmp_path / "in", 3 * MIB)
    with pytest.raises(TargetFull, match="the target is full"):
        await target.put("db/big.enc", tmp_path / "in")
    assert await target.list() == []
