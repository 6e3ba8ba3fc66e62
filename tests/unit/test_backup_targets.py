"""Backup targets without a network: `load_target` refuses unknown names and bad configuration
with the key at fault; the `objects` target keeps backups in the in-memory store (round trip of
a file of several MiB, replacement, prefixes, a corrupted object refused with no file left);
the `s3` target's errors from S3 answers, never with the secret in them, and a cancelled fetch
that leaves no file (against an S3 client held mid-download)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from meshd.agent.store import StoreUnavailable
from plugins.backups import (
    BackupCorrupt,
    BackupNotFound,
    BackupTarget,
    BackupTargetConfigError,
    BackupTargetContext,
    BackupTargetError,
    InvalidBackupKey,
    TargetAccessDenied,
    TargetFull,
    TargetUnavailable,
    UnknownBackupTarget,
    load_target,
)
from plugins.backups.objects import STORE
from plugins.backups.s3 import S3Target, translate
from tests.support.memstore import MemoryStore
from tests.support.waiting import until

MIB = 1024 * 1024
SECRET = "very-secret-key-Zq9"
SPACES = {
    "endpoint": "https://fra1.digitaloceanspaces.com",
    "bucket": "mesh-backups",
    "region": "fra1",
    "access_key": "DO00EXAMPLE",
}


def secrets_with(name: str, value: bytes) -> Any:
    return lambda wanted: value if wanted == name else None


def random_file(path: Path, size: int) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def memory() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def target(memory: MemoryStore) -> BackupTarget:
    return load_target("objects", BackupTargetContext(objects=memory))


# --- load_target -------------------------------------------------------------------------


def test_an_unknown_target_is_refused_with_the_known_ones() -> None:
    with pytest.raises(UnknownBackupTarget) as caught:
        load_target("ftp", BackupTargetContext())
    assert caught.value.known == ["objects", "s3"]
    assert "known targets: objects, s3" in str(caught.value)
    assert isinstance(caught.value, LookupError)


@pytest.mark.parametrize(
    ("change", "key", "says"),
    [
        ({"endpoint": None}, "endpoint", "https://fra1.digitaloceanspaces.com"),
        ({"endpoint": "fra1.digitaloceanspaces.com"}, "endpoint", "http(s) URL"),
        ({"endpoint": "https://fra1.digitaloceanspaces.com/x"}, "endpoint", "without a path"),
        ({"bucket": None}, "bucket", "bucket name"),
        ({"bucket": "Mesh_Backups"}, "bucket", "lowercase"),
        ({"access_key": ""}, "access_key", "access key id"),
        ({"region": 3}, "region", "region name"),
        ({"prefix": "a//../b c"}, "prefix", "letters, digits"),
        ({"secret_key": SECRET}, "secret_key", "known keys: endpoint, bucket"),
    ],
)
def test_bad_s3_configuration_names_the_key_and_what_is_right(
    change: dict[str, Any], key: str, says: str
) -> None:
    config = {k: v for k, v in (SPACES | change).items() if v is not None}
    ctx = BackupTargetContext(config=config, secrets=secrets_with("s3_secret_key", b"x"))
    with pytest.raises(BackupTargetConfigError) as caught:
        load_target("s3", ctx)
    assert caught.value.key == key
    assert says in str(caught.value)
    assert SECRET not in str(caught.value)


def test_an_s3_target_without_its_secret_says_how_to_set_it() -> None:
    with pytest.raises(BackupTargetConfigError, match="meshctl secret set --mesh s3_secret_key"):
        load_target("s3", BackupTargetContext(config=dict(SPACES)))


def test_an_s3_target_keeps_its_secret_out_of_sight() -> None:
    ctx = BackupTargetContext(
        config=SPACES | {"prefix": "/mesh1/"},
        secrets=secrets_with("s3_secret_key", f"{SECRET}\n".encode()),
    )
    target = load_target("s3", ctx)
    assert isinstance(target, S3Target)
    assert target.settings.prefix == "mesh1/"
    assert SECRET not in repr(target)
    assert SECRET not in repr(ctx)


def test_the_objects_target_needs_the_mesh_store_and_no_configuration(
    memory: MemoryStore,
) -> None:
    with pytest.raises(BackupTargetConfigError, match="object store"):
        load_target("objects", BackupTargetContext())
    with pytest.raises(BackupTargetConfigError) as caught:
        load_target("objects", BackupTargetContext(config={"bucket": "x"}, objects=memory))
    assert caught.value.key == "bucket"


# --- the objects target ------------------------------------------------------------------


async def test_a_backup_of_several_mib_comes_back_the_same(
    target: BackupTarget, tmp_path: Path
) -> None:
    digest = random_file(tmp_path / "in", 5 * MIB + 17)
    key = "db/shop/prod/database/20261201-2200-1.dump.enc"
    stored = await target.put(key, tmp_path / "in")
    assert (stored.key, stored.size, stored.sha256) == (key, 5 * MIB + 17, digest)
    assert await target.list() == [stored]
    fetched = await target.get(key, tmp_path / "out")
    assert fetched == stored
    assert hashlib.sha256((tmp_path / "out").read_bytes()).hexdigest() == digest
    await target.delete(key)
    assert await target.list() == []
    with pytest.raises(BackupNotFound):
        await target.get(key, tmp_path / "again")
    assert not (tmp_path / "again").exists()
    await target.delete(key)  # gone already: no error


async def test_a_second_put_of_a_key_replaces_the_first(
    target: BackupTarget, memory: MemoryStore, tmp_path: Path
) -> None:
    random_file(tmp_path / "first", 1000)
    digest = random_file(tmp_path / "second", 2000)
    await target.put("state/mesh.enc", tmp_path / "first")
    second = await target.put("state/mesh.enc", tmp_path / "second")
    assert await target.list() == [second]
    assert len(memory.objects[STORE]) == 1
    await target.get("state/mesh.enc", tmp_path / "out")
    assert hashlib.sha256((tmp_path / "out").read_bytes()).hexdigest() == digest


async def test_a_corrupted_backup_is_refused_and_leaves_no_file(
    target: BackupTarget, memory: MemoryStore, tmp_path: Path
) -> None:
    random_file(tmp_path / "in", 3 * MIB)
    stored = await target.put("secrets/sealed.enc", tmp_path / "in")
    (name,) = memory.objects[STORE]
    rotten = bytearray(memory.objects[STORE][name])
    rotten[MIB] ^= 0xFF
    memory.objects[STORE][name] = bytes(rotten)
    (tmp_path / "restore").mkdir()
    with pytest.raises(BackupCorrupt) as caught:
        await target.get("secrets/sealed.enc", tmp_path / "restore" / "sealed.enc")
    assert caught.value.expected == stored.sha256
    assert caught.value.actual == hashlib.sha256(rotten).hexdigest()
    assert stored.sha256 in str(caught.value) and caught.value.actual in str(caught.value)
    assert list((tmp_path / "restore").iterdir()) == []


async def test_list_by_prefix_is_sorted_by_key(target: BackupTarget, tmp_path: Path) -> None:
    random_file(tmp_path / "in", 10)
    keys = ["db/shop/uat/x.enc", "db/blog/prod/y.enc", "state/z.enc", "db/shop/prod/w.enc"]
    for key in keys:
        await target.put(key, tmp_path / "in")
    assert [b.key for b in await target.list("db/")] == sorted(keys[:2] + keys[3:])
    assert [b.key for b in await target.list("db/shop/")] == [keys[3], keys[0]]
    assert [b.key for b in await target.list()] == sorted(keys)
    assert await target.list("nothing/") == []


@pytest.mark.parametrize("key", ["", "/abs.enc", "a//b", "a/../b", "a#1", "with space"])
async def test_keys_that_no_target_takes_are_refused(
    target: BackupTarget, tmp_path: Path, key: str
) -> None:
    random_file(tmp_path / "in", 10)
    with pytest.raises(InvalidBackupKey):
        await target.put(key, tmp_path / "in")


async def test_an_unavailable_store_is_target_unavailable(
    target: BackupTarget, memory: MemoryStore, tmp_path: Path
) -> None:
    random_file(tmp_path / "in", 10)
    memory.unavailable = True
    with pytest.raises(TargetUnavailable, match="'objects'"):
        await target.put("a.enc", tmp_path / "in")
    with pytest.raises(TargetUnavailable):
        await target.list()


async def test_a_store_out_of_room_is_target_full(
    target: BackupTarget, memory: MemoryStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refuse(*args: object) -> int:
        raise StoreUnavailable("store mesh_backups/a.enc: insufficient resources")

    monkeypatch.setattr(memory, "put_object", refuse)
    random_file(tmp_path / "in", 10)
    with pytest.raises(TargetFull, match="the target is full"):
        await target.put("a.enc", tmp_path / "in")


# --- the s3 target's errors --------------------------------------------------------------


def s3_answer(code: str, status: int, message: str = "m") -> botocore.exceptions.ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return botocore.exceptions.ClientError(response, "PutObject")


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (s3_answer("EntityTooLarge", 400), TargetFull),
        (s3_answer("QuotaExceeded", 403), TargetFull),
        (s3_answer("InsufficientStorage", 507), TargetFull),
        (s3_answer("NoSuchKey", 404), BackupNotFound),
        (s3_answer("404", 404), BackupNotFound),
        (s3_answer("SignatureDoesNotMatch", 403, f"signed with {SECRET}"), TargetAccessDenied),
        (s3_answer("InvalidAccessKeyId", 403), TargetAccessDenied),
        (s3_answer("SlowDown", 503), TargetUnavailable),
        (s3_answer("InternalError", 500), TargetUnavailable),
        (s3_answer("NoSuchBucket", 404), BackupTargetError),
        (botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"), TargetUnavailable),
        (botocore.exceptions.ConnectTimeoutError(endpoint_url="http://x"), TargetUnavailable),
    ],
)
def test_s3_answers_become_the_targets_errors(
    error: BaseException, kind: type[BackupTargetError]
) -> None:
    translated = translate(
        "store backup 'a.enc'", error, endpoint="http://x", secret=SECRET, key="a.enc"
    )
    assert type(translated) is kind
    assert str(translated).startswith("store backup 'a.enc' on backup target 's3': ")
    assert SECRET not in str(translated)


def test_a_full_s3_store_says_so() -> None:
    translated = translate(
        "store backup 'a'", s3_answer("EntityTooLarge", 400), endpoint="", secret=""
    )
    assert "the target is full (EntityTooLarge: m)" in str(translated)


class HeldDownload:
    """An S3 client whose download stops after its first bytes until `release` is set."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def get_object(self, **_: object) -> dict[str, Any]:
        return {"Metadata": {"sha256": "0" * 64}, "Body": self, "LastModified": datetime.now(UTC)}

    def iter_chunks(self, size: int) -> Any:
        yield b"first bytes"
        self.release.wait(10)
        yield b"the rest"

    def close(self) -> None:
        pass


async def test_a_cancelled_s3_fetch_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = BackupTargetContext(config=SPACES, secrets=secrets_with("s3_secret_key", b"x"))
    target = load_target("s3", ctx)
    held = HeldDownload()
    monkeypatch.setattr(target, "_new_client", lambda: held)
    restore = tmp_path / "restore"
    restore.mkdir()
    fetch = asyncio.create_task(target.get("a.enc", restore / "a.enc"))
    await until(lambda: list(restore.iterdir()), "a partial file")
    fetch.cancel()
    with pytest.raises(asyncio.CancelledError):
        await fetch
    held.release.set()
    await until(lambda: not list(restore.iterdir()), "the partial file removed")
    await target.close()
