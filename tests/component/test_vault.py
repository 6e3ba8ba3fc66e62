"""The Vault / OpenBao backend against a real OpenBao dev server (one per test session): the
source reads the mesh's, a project's and an environment's secrets, sees a new version after a
`kv put`, logs in with an AppRole (again when its token is revoked), and refuses a bad token
or an unreachable server with a clear error that names no credential. The mirror, against a
real nats-server, writes each Vault secret as the mesh's own sealed value, writes nothing for
a version it has, a new version (and an event without the value) for a rotated one, and rolls
the services that use it."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest

from meshd.agent.lease import Term
from meshd.agent.meshview import MeshView
from meshd.agent.sealkey import DropletKeys
from meshd.agent.store import Store
from meshd.core.sealing import (
    KeyPair,
    entry_context,
    from_text,
    open_sealed,
    open_value,
    seal_value,
)
from meshd.core.spec import ENVIRONMENTS, DesiredState, ProjectSpec
from meshd.roles.secrets import SecretKeeper
from meshd.roles.vault_mirror import VaultMirror, mirror
from plugins.secrets.vault import (
    VaultAuth,
    VaultCredentials,
    VaultDenied,
    VaultEntry,
    VaultError,
    VaultSettings,
    VaultSource,
    VaultUnreachable,
)
from protocol import subjects
from protocol.codec import decode, encode
from protocol.messages import RestartRequest
from protocol.secrets import SealedSecret, SecretScope, SecretValue
from tests.support import free_port
from tests.support.factories import allocation, node
from tests.support.openbao import OpenBao, running_openbao
from tests.support.waiting import until

PROJECTS = {"shop": ENVIRONMENTS, "blog": ENVIRONMENTS}


@pytest.fixture(scope="session")
def openbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBao]:
    with running_openbao(tmp_path_factory.mktemp("openbao")) as server:
        yield server


@pytest.fixture
def prefix() -> str:
    """Each test's own corner of the shared server's `secret` mount."""
    return f"t{secrets.token_hex(4)}"


def put(server: OpenBao, path: str, data: dict[str, Any]) -> int:
    """`kv put`; the path's new version."""
    answer = server.client().secrets.kv.v2.create_or_update_secret(
        path=path, secret=data, mount_point="secret"
    )
    return int(answer["data"]["version"])


def source(server: OpenBao, prefix: str, token: str | None = None) -> VaultSource:
    settings = VaultSettings(server.address, prefix=prefix)
    return VaultSource(settings, VaultCredentials(token=token or server.root_token))


def found(entries: list[VaultEntry]) -> dict[tuple[str, str | None, str | None, str], bytes]:
    return {(e.scope.value, e.project, e.env, e.name): e.value for e in entries}


def term() -> Term:
    return Term("secrets", 7, time.monotonic() + 600)


# --- reading ---------------------------------------------------------------------------------


async def test_the_source_reads_the_mesh_project_and_environment_secrets(
    openbao: OpenBao, prefix: str
) -> None:
    put(openbao, f"{prefix}/mesh", {"smtp_password": "mesh-mail"})
    put(openbao, f"{prefix}/shop", {"api_key": "shop-key"})
    put(openbao, f"{prefix}/shop/prod", {"api_key": "prod-key", "Bad-Name": "x", "count": 3})
    reader = source(openbao, prefix)
    try:
        entries = await reader.read(PROJECTS)
    finally:
        reader.close()
    assert found(entries) == {
        ("mesh", None, None, "smtp_password"): b"mesh-mail",
        ("project", "shop", None, "api_key"): b"shop-key",
        ("env", "shop", "prod", "api_key"): b"prod-key",  # the others are ignored, not fatal
    }
    assert {e.version for e in entries} == {1}
    assert "prod-key" not in repr(entries)


async def test_the_source_reads_the_new_version_after_a_kv_put(
    openbao: OpenBao, prefix: str
) -> None:
    put(openbao, f"{prefix}/shop/uat", {"api_key": "first"})
    reader = source(openbao, prefix)
    try:
        (before,) = await reader.read({"shop": ["uat"]})
        assert put(openbao, f"{prefix}/shop/uat", {"api_key": "second"}) == 2
        (after,) = await reader.read({"shop": ["uat"]})
    finally:
        reader.close()
    assert (before.version, before.value) == (1, b"first")
    assert (after.version, after.value) == (2, b"second")


async def test_a_path_that_does_not_exist_is_empty(openbao: OpenBao, prefix: str) -> None:
    reader = source(openbao, prefix)
    try:
        assert await reader.read(PROJECTS) == []
    finally:
        reader.close()


def approle(server: OpenBao, prefix: str) -> tuple[str, str]:
    """An AppRole that may read `secret/data/<prefix>/*`: its role_id and a secret_id."""
    root = server.client()
    if "approle/" not in root.sys.list_auth_methods()["data"]:
        root.sys.enable_auth_method("approle")
    policy = f'path "secret/data/{prefix}/*" {{ capabilities = ["read"] }}'
    root.sys.create_or_update_policy(name=prefix, policy=policy)
    root.auth.approle.create_or_update_approle(prefix, token_policies=[prefix], token_ttl="10m")
    role_id = root.auth.approle.read_role_id(prefix)["data"]["role_id"]
    secret_id = root.auth.approle.generate_secret_id(prefix)["data"]["secret_id"]
    return role_id, secret_id


def revoke_all_but_root(server: OpenBao) -> int:
    root = server.client()
    own = root.auth.token.lookup_self()["data"]["accessor"]
    accessors = root.auth.token.list_accessors()["data"]["keys"]
    for accessor in accessors:
        if accessor != own:
            root.auth.token.revoke_accessor(accessor)
    return len(accessors) - 1


async def test_an_approle_logs_in_and_again_when_its_token_is_revoked(
    openbao: OpenBao, prefix: str
) -> None:
    put(openbao, f"{prefix}/mesh", {"smtp_password": "mail"})
    role_id, secret_id = approle(openbao, prefix)
    settings = VaultSettings(openbao.address, auth=VaultAuth.APPROLE, prefix=prefix)
    reader = VaultSource(settings, VaultCredentials(role_id=role_id, secret_id=secret_id))
    try:
        (first,) = await reader.read({})
        assert revoke_all_but_root(openbao) >= 1
        (again,) = await reader.read({})
    finally:
        reader.close()
    assert first.value == again.value == b"mail"


async def test_a_refused_approle_login_is_denied_without_its_ids(
    openbao: OpenBao, prefix: str
) -> None:
    role_id, _ = approle(openbao, prefix)
    wrong = "not-the-secret-id-" + secrets.token_hex(8)
    settings = VaultSettings(openbao.address, auth=VaultAuth.APPROLE, prefix=prefix)
    reader = VaultSource(settings, VaultCredentials(role_id=role_id, secret_id=wrong))
    with pytest.raises(VaultDenied) as caught:
        await reader.read({})
    assert "AppRole login refused" in str(caught.value)
    assert role_id not in str(caught.value) and wrong not in str(caught.value)


async def test_a_bad_token_is_denied_and_the_message_does_not_name_it(
    openbao: OpenBao, prefix: str
) -> None:
    bad = "hvs.wrong-" + secrets.token_hex(12)
    reader = source(openbao, prefix, token=bad)
    with pytest.raises(VaultError) as caught:
        await reader.read(PROJECTS)
    assert isinstance(caught.value, VaultDenied)
    assert "permission denied" in str(caught.value) and "vault_token" in str(caught.value)
    assert bad not in str(caught.value)
    assert bad not in repr(caught.value.__cause__) and caught.value.__suppress_context__


async def test_an_unreachable_server_is_a_clear_error() -> None:
    address = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    reader = VaultSource(VaultSettings(address), VaultCredentials(token="hvs.x"))
    with pytest.raises(VaultUnreachable) as caught:
        await reader.read(PROJECTS)
    assert str(caught.value) == f"vault at {address}: no answer (ConnectionError)"


async def test_a_mount_that_does_not_exist_is_an_error_not_an_empty_vault(
    openbao: OpenBao, prefix: str
) -> None:
    settings = VaultSettings(openbao.address, mount="nowhere", prefix=prefix)
    reader = VaultSource(settings, VaultCredentials(token=openbao.root_token))
    with pytest.raises(VaultError, match="no KV v2 mount 'nowhere'"):
        await reader.read({})


# --- mirroring into the mesh -------------------------------------------------------------------


async def stored(store: Store, key: str) -> tuple[SecretValue, int]:
    entry = await store.get(subjects.SECRETS_BUCKET, key)
    assert entry is not None and entry.value is not None
    return decode(entry.value, SecretValue), entry.revision


async def values(store: Store) -> dict[str, SecretValue]:
    entries = await store.entries(subjects.SECRETS_BUCKET, subjects.SECRET_VALUES)
    return {k: decode(e.value, SecretValue) for k, e in entries.items() if e.value}


async def test_the_mirror_writes_sealed_values_and_a_new_version_only_when_vault_has_one(
    openbao: OpenBao, prefix: str, store: Store
) -> None:
    mesh, now = KeyPair.new(), term()
    key = subjects.secret_value_key("api_key", "shop", "prod")
    put(openbao, f"{prefix}/shop/prod", {"api_key": "one"})
    reader = source(openbao, prefix)
    try:
        first = await mirror(store, now, mesh, {}, await reader.read(PROJECTS), "master")
        value, revision = await stored(store, key)
        assert [(m.key, m.version, m.changed) for m in first] == [(key, 1, True)]
        assert (value.version, value.vault_version, value.set_by) == (1, 1, "vault")
        assert (value.scope, value.project, value.env) == (SecretScope.ENV, "shop", "prod")
        assert open_value(mesh, key, 1, value.sealed) == b"one"

        unchanged = await reader.read(PROJECTS)
        assert await mirror(store, now, mesh, await values(store), unchanged, "master") == []
        assert (await stored(store, key))[1] == revision

        put(openbao, f"{prefix}/shop/prod", {"api_key": "two"})
        rotated = await mirror(
            store, now, mesh, await values(store), await reader.read(PROJECTS), "m"
        )
    finally:
        reader.close()
    value, _ = await stored(store, key)
    assert [(m.version, m.changed) for m in rotated] == [(2, True)]
    assert (value.version, value.vault_version) == (2, 2)
    assert open_value(mesh, key, 2, value.sealed) == b"two"
    events = [e for e in await store.recent_events(20) if e.name == "secret_from_vault"]
    assert [(e.subject, e.detail["version"], e.fence) for e in events] == [(key, 1, 7), (key, 2, 7)]
    assert events[-1].detail["vault_version"] == 2
    assert "two" not in json.dumps([e.detail for e in events])


async def test_a_value_vault_saved_again_unchanged_keeps_its_version(
    openbao: OpenBao, prefix: str, store: Store
) -> None:
    """A secret copied into Vault from `meshctl secret set`, or saved again unchanged, moves
    only the marker: the droplets keep what is sealed to them and nothing is rolled."""
    mesh, now = KeyPair.new(), term()
    key = subjects.secret_value_key("smtp_password")
    await store.create(
        subjects.SECRETS_BUCKET,
        key,
        encode(
            SecretValue(
                name="smtp_password",
                scope=SecretScope.MESH,
                project=None,
                env=None,
                version=4,
                sealed=seal_value(mesh.public, key, 4, b"same"),
                mesh_key=mesh.fingerprint,
                set_by="op@laptop",
                set_at=0.0,
            )
        ),
    )
    put(openbao, f"{prefix}/mesh", {"smtp_password": "same"})
    reader = source(openbao, prefix)
    try:
        written = await mirror(store, now, mesh, await values(store), await reader.read({}), "m")
    finally:
        reader.close()
    value, _ = await stored(store, key)
    assert [(m.version, m.changed) for m in written] == [(4, False)]
    assert (value.version, value.vault_version, value.set_by) == (4, 1, "vault")
    assert not [e for e in await store.recent_events(20) if e.name == "secret_from_vault"]


def mesh_secret(mesh: KeyPair, name: str, value: str) -> tuple[str, SecretValue]:
    key = subjects.secret_value_key(name)
    return key, SecretValue(
        name=name,
        scope=SecretScope.MESH,
        project=None,
        env=None,
        version=1,
        sealed=seal_value(mesh.public, key, 1, value.encode()),
        mesh_key=mesh.fingerprint,
        set_by="op@laptop",
        set_at=0.0,
    )


def published(address: str, prefix: str) -> DesiredState:
    shop = ProjectSpec("shop", 1, "s-1vcpu-1gb", "s-1vcpu-1gb", services=())
    return DesiredState(projects=(shop,), vault=VaultSettings(address, prefix=prefix).to_data())


def opener(mesh: KeyPair) -> Any:
    return lambda key, value: open_value(mesh, key, value.version, value.sealed)


async def test_the_role_link_logs_in_from_the_mesh_secret_and_rolls_the_users_of_a_rotation(
    openbao: OpenBao, prefix: str, store: Store
) -> None:
    mesh, now = KeyPair.new(), term()
    link = VaultMirror(store, "master")
    state = published(openbao.address, prefix)
    put(openbao, f"{prefix}/shop/prod", {"api_key": "one"})
    known = dict([mesh_secret(mesh, "vault_token", openbao.root_token)])
    backend = allocation(secrets=("api_key",))
    database = allocation(service="database", service_kind="database", secrets=("api_key",))
    worker = allocation(service="mailer", service_kind="worker", secrets=("other",))
    try:
        assert await link.pull(now, mesh, state, known, opener(mesh))
        known = await values(store) | known
        await link.roll(now, [backend, database, worker], known)
        restarts = await store.entries(subjects.DESIRED_BUCKET, subjects.RESTARTS)
        assert sorted(restarts) == [subjects.restart_key("shop", "prod", "backend")]
        # Rolled once: the next pass has nothing new.
        assert not await link.pull(now, mesh, state, known, opener(mesh))
        await link.roll(now, [backend, database, worker], known)
        entry = restarts[subjects.restart_key("shop", "prod", "backend")]
        request = decode(entry.value or b"", RestartRequest)
        again = await store.get(subjects.DESIRED_BUCKET, entry.key)
        assert again is not None and again.revision == entry.revision
        assert request.requested_by == "vault"
    finally:
        link.close()
    events = [e for e in await store.recent_events(20) if e.name == "restart_requested"]
    assert [(e.subject, e.detail["secrets"]) for e in events] == [
        ("shop.prod.backend", ["api_key"])
    ]


async def test_the_role_link_tells_a_vault_failure_once_and_keeps_going(
    prefix: str, store: Store
) -> None:
    mesh, now = KeyPair.new(), term()
    link = VaultMirror(store, "master")
    state = published(f"http://127.0.0.1:{free_port()}", prefix)
    no_login: dict[str, SecretValue] = {}
    assert not await link.pull(now, mesh, state, no_login, opener(mesh))
    assert not await link.pull(now, mesh, state, no_login, opener(mesh))
    known = dict([mesh_secret(mesh, "vault_token", "hvs.never-shown")])
    assert not await link.pull(now, mesh, state, known, opener(mesh))
    link.close()

    async def told() -> list[str] | None:
        events = await store.recent_events(20)
        errors = [e.detail["error"] for e in events if e.name == "vault_unreachable"]
        return errors if len(errors) >= 2 else None

    errors = await until(told, "two vault_unreachable events")
    assert len(errors) == 2  # the same problem twice is told once
    assert "no login: set the mesh secret vault_token" in errors[0]
    assert "no answer" in errors[1] and "never-shown" not in errors[1]


async def test_the_secrets_role_seals_vault_secrets_and_rolls_after_a_rotation(
    openbao: OpenBao, prefix: str, store: Store
) -> None:
    """The whole pass: the role mirrors Vault, seals the value to the droplet that runs the
    service, and asks for its restart only once the new version is sealed there."""
    keys = DropletKeys(KeyPair.new())
    view = MeshView()
    view.nodes = {"master": node("master", seal_key=keys.current.public_text)}
    backend = allocation(droplets=("master",), secrets=("api_key",))
    view.allocations = {"shop.prod.backend": backend}
    view.state = published(openbao.address, prefix)
    keeper = SecretKeeper(store, view, "master", keys, VaultMirror(store, "master"))
    now = term()
    await keeper.keep(now)  # makes the mesh key; Vault has no login yet
    mesh = await keeper.mesh_key(now)
    assert mesh is not None
    key, token = mesh_secret(mesh, "vault_token", openbao.root_token)
    await store.create(subjects.SECRETS_BUCKET, key, encode(token))
    sealed_key = subjects.sealed_key("master", "api_key", "shop", "prod")

    async def sealed() -> tuple[int, bytes]:
        entry = await store.get(subjects.SECRETS_BUCKET, sealed_key)
        assert entry is not None and entry.value is not None
        box = decode(entry.value, SealedSecret)
        value = open_sealed(
            keys.current, from_text(box.sealed), entry_context(sealed_key, box.version)
        )
        return box.version, value

    async def restarts() -> int:
        entry = await store.get(
            subjects.DESIRED_BUCKET, subjects.restart_key("shop", "prod", "backend")
        )
        return decode(entry.value, RestartRequest).count if entry and entry.value else 0

    put(openbao, f"{prefix}/shop/prod", {"api_key": "one"})
    await keeper.keep(now)
    assert await sealed() == (1, b"one")
    assert await restarts() == 1  # like `meshctl secret set`: a waiting service starts with it
    await keeper.keep(now)
    assert await restarts() == 1  # nothing new in Vault: nothing written, nothing rolled

    put(openbao, f"{prefix}/shop/prod", {"api_key": "two"})
    await keeper.keep(now)
    assert await sealed() == (2, b"two")
    assert await restarts() == 2
    names = [e.name for e in await store.recent_events(50)]
    rotated = max(i for i, n in enumerate(names) if n == "secret_from_vault")
    assert names[rotated:] == ["secret_from_vault", "secrets_sealed", "restart_requested"]
