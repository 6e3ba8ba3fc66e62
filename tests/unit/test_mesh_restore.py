"""`meshctl backup restore-mesh` without a mesh: which documents, entries and backups it takes
(pure), how it opens a lost mesh's backups with the escrow key (and says clearly when it
cannot), the `backups` leader keeping the escrowed mesh key beside the secrets documents, and
the `secrets` role letting go of a mesh key that was replaced."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import click
import pytest

from meshd.agent.lease import Term
from meshd.agent.meshkey import ESCROW, holder_entry
from meshd.agent.meshview import MeshView
from meshd.agent.sealkey import DropletKeys
from meshd.agent.state_documents import state_document
from meshd.cli.escrow import read_escrow_key
from meshd.cli.lost_mesh import read_old_mesh
from meshd.core.backup_crypto import encrypt_stream
from meshd.core.backup_policy import ESCROW_OBJECT, backup_key, expired, parse_backup_key
from meshd.core.mesh_restore import (
    datastore_backups,
    desired_entries,
    dropped_secrets,
    escrow_key_entry,
    foreign_values,
    kept_target,
    newest_documents,
    secret_values,
)
from meshd.core.sealing import KeyPair, entry_context, from_text, open_sealed, seal_value, to_text
from meshd.roles.backups import Backups
from meshd.roles.backups.loading import Loader
from meshd.roles.backups.targets import Targets
from meshd.roles.secrets import SecretKeeper
from plugins.backups import BackupTarget, BackupTargetContext, load_target
from protocol import subjects
from protocol.backups import BackupTargetSpec
from protocol.codec import decode, encode
from protocol.errors import MeshError
from protocol.secrets import MeshKey, SealedSecret, SecretScope, SecretValue
from tests.support.factories import allocation, node
from tests.support.memstore import MemoryStore

NOW = 1_796_162_400.0  # 2026-12-01 22:00 UTC
S3 = {"endpoint": "https://fra1.example.com", "bucket": "mesh-backups", "access_key": "AK"}


def key(kind: str, hours_ago: float, project: str = "mesh", env: str = "mesh") -> str:
    """A backup's key; the service is named for its kind (`database`, `redis`, `state`)."""
    return backup_key(kind, project, env, kind, NOW - hours_ago * 3600, "ab12")


def value(mesh: KeyPair, name: str, text: str, version: int = 1) -> SecretValue:
    entry = subjects.secret_value_key(name, "shop", "prod")
    return SecretValue(
        name=name,
        scope=SecretScope.ENV,
        project="shop",
        env="prod",
        version=version,
        sealed=seal_value(mesh.public, entry, version, text.encode()),
        mesh_key=mesh.fingerprint,
        set_by="op@laptop",
        set_at=NOW,
    )


# --- what is taken (pure) --------------------------------------------------------------------


def test_the_newest_state_and_secrets_documents_are_taken_and_nothing_else() -> None:
    keys = [key("state", 3), key("state", 1), key("secrets", 2), key("secrets", 5),
            key("database", 0, "shop", "prod"), ESCROW_OBJECT, "staging/x.enc"]  # fmt: skip
    found = newest_documents(keys)
    assert {kind: name.key for kind, name in found.items()} == {
        "state": key("state", 1),
        "secrets": key("secrets", 2),
    }
    assert newest_documents([key("database", 0, "shop", "prod")]) == {}


def test_each_running_datastore_gets_its_newest_backup_of_its_own_kind() -> None:
    keys = [key("database", 7, "shop", "prod"), key("database", 1, "shop", "prod"),
            key("redis", 2, "shop", "prod"), key("database", 1, "gone", "prod"),
            key("state", 0), ESCROW_OBJECT]  # fmt: skip
    running = [("shop", "prod", "database", "database"), ("shop", "prod", "redis", "redis"),
               ("shop", "uat", "database", "database")]  # fmt: skip
    chosen, without = datastore_backups(keys, running)
    assert [n.key for n in chosen] == [
        key("database", 1, "shop", "prod"),
        key("redis", 2, "shop", "prod"),
    ]
    assert without == [("shop", "uat", "database")]
    # A backup of another kind under a datastore's name is not loaded into it.
    wrong = backup_key("redis", "shop", "prod", "database", NOW, "ab12")
    assert datastore_backups([wrong], running[:1]) == ([], [("shop", "prod", "database")])


def test_the_new_mesh_takes_the_spec_and_variables_not_what_it_works_out_itself() -> None:
    desired = {
        subjects.DESIRED_KEY: b"spec",
        subjects.config_key("shop"): b"c1",
        subjects.config_key("shop", "prod"): b"c2",
        subjects.BACKUP_TARGET_KEY: b"target",  # apart: kept_target
        subjects.PLACEMENT_KEY: b"p",
        subjects.JETSTREAM_KEY: b"j",
        subjects.JETSTREAM_APPLIED_KEY: b"ja",
        subjects.hold_key("web1"): b"h",
        subjects.restart_key("shop", "prod", "backend"): b"r",
        subjects.release_target_key("shop", "prod"): b"rt",  # its artifacts are lost
        subjects.HEARTBEAT_MARK_KEY: b"hb",
        subjects.alerted_key("web1", 1): b"a",
    }
    assert sorted(desired_entries(desired)) == ["config.shop", "config.shop.prod", "spec"]


def test_the_values_are_taken_and_what_the_new_mesh_sealed_itself_is_dropped() -> None:
    old = {subjects.MESH_KEY: b"k", "value.mesh.s3_secret_key": b"v1",
           "value.env.shop.prod.api_key": b"v2", "sealed.web1.shop.prod.api_key": b"s",
           subjects.holder_key("web1"): b"h", subjects.ESCROWED_MESH_KEY: b"e"}  # fmt: skip
    assert sorted(secret_values(old)) == ["value.env.shop.prod.api_key", "value.mesh.s3_secret_key"]
    current = ["sealed.master.mesh.s3_secret_key", "holder.master", "holder.web9", "mesh-key",
               "value.mesh.x", "escrow-key"]  # fmt: skip
    assert dropped_secrets(current, ["holder.master"]) == [
        "holder.web9",
        "sealed.master.mesh.s3_secret_key",
    ]
    mesh, other = KeyPair.new(), KeyPair.new()
    entries = {"value.env.shop.prod.a": encode(value(mesh, "a", "x")),
               "value.env.shop.prod.b": encode(value(other, "b", "y")),
               "value.env.shop.prod.c": b"unreadable", "holder.master": b"h"}  # fmt: skip
    assert foreign_values(entries, mesh.fingerprint) == ["value.env.shop.prod.b"]


def test_the_escrow_key_is_the_old_entry_only_when_it_is_the_key_restored_with() -> None:
    escrow = KeyPair.new()
    mine = MeshKey(public=escrow.public_text, fingerprint=escrow.fingerprint,
                   created_by="op@old", created_at=1.0)  # fmt: skip
    assert escrow_key_entry({subjects.ESCROW_KEY: encode(mine)}, escrow, "op@new", NOW) == mine
    other = KeyPair.new()
    made = escrow_key_entry(
        {
            subjects.ESCROW_KEY: encode(
                MeshKey(public=other.public_text, fingerprint="x", created_by="a", created_at=1.0)
            )
        },  # fmt: skip
        escrow,
        "op@new",
        NOW,
    )
    assert (made.public, made.created_by) == (escrow.public_text, "op@new")
    assert escrow_key_entry({}, escrow, "op@new", NOW).fingerprint == escrow.fingerprint


def test_the_new_mesh_keeps_its_backups_where_they_were_restored_from() -> None:
    old = BackupTargetSpec(name="s3", config=S3 | {"prefix": "m1", "region": "fra1"}, set_by="a")
    same = kept_target(old, S3 | {"endpoint": S3["endpoint"] + "/", "prefix": "/m1/"}, "b", NOW)
    assert same == old  # its settings as they were (the region too)
    moved = kept_target(old, S3 | {"prefix": "m2"}, "b", NOW)
    assert (moved.name, moved.config["prefix"], moved.set_by) == ("s3", "m2", "b")
    assert kept_target(None, S3, "b", NOW).config == S3
    assert kept_target(BackupTargetSpec(name="objects"), S3, "b", NOW).name == "s3"


# --- opening a lost mesh's backups -----------------------------------------------------------


def escrow_file(tmp_path: Path, pair: KeyPair, name: str = "escrow.json") -> Path:
    path = tmp_path / name
    path.write_text(
        json.dumps(
            {
                "format": "meshd-escrow-key/1",
                "mesh": "old",
                "fingerprint": pair.fingerprint,
                "private": to_text(pair.private),
            }
        )  # fmt: skip
    )
    return path


async def lost_mesh(tmp_path: Path, escrow: KeyPair | None) -> tuple[BackupTarget, KeyPair]:
    """A target as a lost mesh left it: its state and secrets documents encrypted to its
    mesh key, and (with an escrow key) that key sealed to the escrow key."""
    mesh, old = KeyPair.new(), MemoryStore()
    public = MeshKey(public=mesh.public_text, fingerprint=mesh.fingerprint,
                     created_by="master", created_at=1.0)  # fmt: skip
    await old.put(subjects.SECRETS_BUCKET, subjects.MESH_KEY, encode(public))
    await old.put(subjects.SECRETS_BUCKET, "value.env.shop.prod.api_key",
                  encode(value(mesh, "api_key", "old-value")))  # fmt: skip
    await old.put(subjects.DESIRED_BUCKET, subjects.DESIRED_KEY, b"the spec")
    target = load_target("objects", BackupTargetContext(objects=MemoryStore()))
    for kind in ("state", "secrets"):
        name = backup_key(kind, "mesh", "mesh", kind, time.time() - 60, "ab12")
        plain = io.BytesIO(await state_document(old, kind, "old"))
        with (tmp_path / kind).open("wb") as out:
            encrypt_stream(plain, out, mesh.public, name.encode())
        await target.put(name, tmp_path / kind)
    if escrow is not None:
        (tmp_path / "escrowed").write_bytes(encode(holder_entry(mesh, ESCROW, escrow.public, 3)))
        await target.put(ESCROW_OBJECT, tmp_path / "escrowed")
    return target, mesh


async def test_the_escrow_key_opens_the_lost_mesh_key_and_its_documents(tmp_path: Path) -> None:
    escrow = KeyPair.new()
    target, mesh = await lost_mesh(tmp_path, escrow)
    old = await read_old_mesh(target, read_escrow_key(escrow_file(tmp_path, escrow)))
    assert old.mesh == mesh
    assert old.bucket("state", subjects.DESIRED_BUCKET) == {subjects.DESIRED_KEY: b"the spec"}
    restored = decode(old.bucket("secrets", subjects.SECRETS_BUCKET)[
        "value.env.shop.prod.api_key"], SecretValue)  # fmt: skip
    assert restored.mesh_key == mesh.fingerprint
    assert ESCROW_OBJECT in old.keys and decode(old.escrowed, SealedSecret).droplet == ESCROW


async def test_a_wrong_escrow_key_is_refused_saying_which_one_is_needed(tmp_path: Path) -> None:
    escrow, wrong = KeyPair.new(), KeyPair.new()
    target, _ = await lost_mesh(tmp_path, escrow)
    with pytest.raises(click.UsageError) as refused:
        await read_old_mesh(target, wrong)
    said = refused.value.message
    assert escrow.fingerprint in said and wrong.fingerprint in said
    assert "meshctl secret export-key" in said


async def test_a_target_without_an_escrowed_mesh_key_says_why_nothing_opens(
    tmp_path: Path,
) -> None:
    target, _ = await lost_mesh(tmp_path, None)
    with pytest.raises(MeshError, match=r"no escrowed mesh key \(escrow/mesh-key\).*export-key"):
        await read_old_mesh(target, KeyPair.new())


def test_an_escrow_key_file_that_is_none_is_bad_input(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('{"format": "something-else"}')
    with pytest.raises(click.UsageError, match="is not an escrow key"):
        read_escrow_key(tmp_path / "bad.json")
    with pytest.raises(click.UsageError, match="cannot read the escrow key"):
        read_escrow_key(tmp_path / "missing.json")
    damaged = escrow_file(tmp_path, KeyPair.new(), "damaged.json")
    damaged.write_text(damaged.read_text().replace('"private": "', '"private": "AAAA'))
    with pytest.raises(click.UsageError, match="damaged|not the one"):
        read_escrow_key(damaged)


# --- the leader keeps the escrowed key beside the secrets documents --------------------------


async def test_the_backups_leader_stores_the_escrowed_mesh_key_with_each_secrets_document(
    tmp_path: Path,
) -> None:
    store, mesh, escrow = MemoryStore(), KeyPair.new(), KeyPair.new()
    public = MeshKey(public=mesh.public_text, fingerprint=mesh.fingerprint,
                     created_by="master", created_at=1.0)  # fmt: skip
    await store.put(subjects.SECRETS_BUCKET, subjects.MESH_KEY, encode(public))
    role = Backups(store, MeshView(), "master", None, tmp_path / "work", "demo", lambda _: None)  # type: ignore[arg-type]
    role.targets = Targets(store, lambda _: None)
    role.loader = Loader(store, role.view, "master", None, role.targets, tmp_path / "work")  # type: ignore[arg-type]
    term = Term("backups", 4, time.monotonic() + 600)

    await role.take_mesh(term, "secrets")  # no escrow key yet: nothing beside it
    assert ESCROW_OBJECT not in {b.key for b in await role.targets.staging.list()}

    escrowed = encode(holder_entry(mesh, ESCROW, escrow.public, 4))
    await store.put(subjects.SECRETS_BUCKET, subjects.ESCROWED_MESH_KEY, escrowed)
    await role.take_mesh(term, "state")  # only with the secrets
    assert ESCROW_OBJECT not in {b.key for b in await role.targets.staging.list()}
    await role.take_mesh(term, "secrets")
    listed = await role.targets.staging.list()
    assert ESCROW_OBJECT in {b.key for b in listed}
    await role.targets.staging.get(ESCROW_OBJECT, tmp_path / "got")
    assert (tmp_path / "got").read_bytes() == escrowed
    # Not a backup: no listing counts it, retention never deletes it.
    assert parse_backup_key(ESCROW_OBJECT) is None
    names = [n for b in listed if (n := parse_backup_key(b.key))]
    assert len(names) == 3 == len(listed) - 1
    assert [n.kind for n in expired(names, time.time() + 365 * 86400)] == ["secrets"]


# --- the secrets role and an adopted mesh key ------------------------------------------------


async def test_the_secrets_role_lets_go_of_a_mesh_key_that_was_replaced(tmp_path: Path) -> None:
    store, keys = MemoryStore(), DropletKeys(KeyPair.new())
    view = MeshView()
    view.nodes = {"master": node("master", seal_key=keys.current.public_text)}
    view.allocations = {"shop.prod.backend": allocation(droplets=("master",), secrets=("api_key",))}
    keeper = SecretKeeper(store, view, "master", keys)
    term = Term("secrets", 7, time.monotonic() + 600)
    await keeper.keep(term)  # makes the new mesh's key
    own = await keeper.mesh_key(term)
    assert own is not None
    entry = subjects.secret_value_key("api_key", "shop", "prod")
    sealed = subjects.sealed_key("master", "api_key", "shop", "prod")
    await store.put(subjects.SECRETS_BUCKET, entry, encode(value(own, "api_key", "new-mesh")))
    await keeper.keep(term)

    async def opened() -> bytes:
        found = await store.get(subjects.SECRETS_BUCKET, sealed)
        assert found is not None and found.value is not None
        box = decode(found.value, SealedSecret)
        return open_sealed(keys.current, from_text(box.sealed), entry_context(sealed, 1))

    assert await opened() == b"new-mesh"
    # What restore-mesh does: the lost mesh's key sealed to this droplet, then made the
    # mesh's, its value (the same key and version) written, what was sealed dropped.
    lost = KeyPair.new()
    holder = holder_entry(lost, "master", keys.current.public, 0)
    await store.put(subjects.SECRETS_BUCKET, subjects.holder_key("master"), encode(holder))
    public = MeshKey(public=lost.public_text, fingerprint=lost.fingerprint,
                     created_by="master", created_at=1.0)  # fmt: skip
    await store.put(subjects.SECRETS_BUCKET, subjects.MESH_KEY, encode(public))
    await store.put(subjects.SECRETS_BUCKET, entry, encode(value(lost, "api_key", "old-mesh")))
    await store.delete(subjects.SECRETS_BUCKET, sealed)
    await keeper.keep(term)
    assert await opened() == b"old-mesh"  # not the value opened before under that version
