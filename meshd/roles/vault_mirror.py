"""The `secrets` role's mirror of Vault / OpenBao (docs/secrets.md, "Vault / OpenBao"), joined
to the role by the agent (a role imports no other role module).

When the published deployment config names a `vault`, each pass of the role reads the KV v2
secrets of the mesh, of each project and of each of its environments (`plugins.secrets.
vault`) and writes each as the mesh's own value, at the key `meshctl secret set` writes and
sealed to the mesh key the same way (`seal_value`). A Vault version the mesh already has is
not written again; a changed value becomes the next version, event `secret_from_vault`, and
once the role has sealed it to the droplets, the services that use it are rolled like after
`meshctl secret set` (datastores are left). Vault re-saving the same value moves only the
marker: no new version, nothing rolled. The login (a token, or an AppRole's role and secret
ids) is a mesh-scoped secret of the mesh itself. A Vault that cannot be read is told once per
distinct error (event `vault_unreachable`), tried again with backoff, and never stops the
role from sealing the values the mesh has.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meshd.agent.lease import Term
from meshd.agent.restarts import request_restart
from meshd.agent.store import Conflict, Store
from meshd.core.backoff import delay
from meshd.core.sealing import KeyPair, SealError, open_value, seal_value
from meshd.core.secret_plan import used_by
from meshd.core.spec import ENVIRONMENTS, DesiredState, ServiceKind
from plugins.secrets.vault import (
    VaultCredentials,
    VaultEntry,
    VaultError,
    VaultSettings,
    VaultSource,
)
from protocol import subjects
from protocol.codec import decode, encode
from protocol.errors import ProtocolError
from protocol.messages import Allocation
from protocol.secrets import SecretValue

log = logging.getLogger(__name__)
ACTOR = "vault"  # who set a mirrored value, and who asks for the restarts it causes
RETRY_BASE_S = 5.0  # after a failed read, Vault is read again within this, doubling ...
RETRY_CAP_S = 120.0  # ... up to this
Opener = Callable[[str, SecretValue], bytes]


@dataclass(frozen=True, slots=True)
class Mirrored:
    """A Vault secret written to `key` as `version`; `changed`: a new value (else Vault saved
    the same value again and only its marker moved)."""

    key: str
    name: str
    version: int
    changed: bool


def value_key(entry: VaultEntry) -> str:
    return subjects.secret_value_key(entry.name, entry.project, entry.env)


async def mirror(
    store: Store,
    term: Term,
    mesh: KeyPair,
    values: Mapping[str, SecretValue],
    entries: Sequence[VaultEntry],
    droplet: str,
) -> list[Mirrored]:
    """Write every entry whose Vault version `values` does not have yet (fenced,
    compare-and-set: one written meanwhile waits for the next pass); what was written."""
    written = []
    for entry in entries:
        known = values.get(value_key(entry))
        if known is not None and known.vault_version == entry.version:
            continue
        done = await _write(store, term, mesh, entry, droplet)
        if done is not None:
            written.append(done)
    return written


async def _write(
    store: Store, term: Term, mesh: KeyPair, entry: VaultEntry, droplet: str
) -> Mirrored | None:
    key = value_key(entry)
    found = await store.get(subjects.SECRETS_BUCKET, key)
    previous = None
    if found is not None and found.value is not None:
        try:
            previous = decode(found.value, SecretValue)
        except ProtocolError as err:
            log.error("Unreadable secret entry left alone. key=%s error=%s", key, err)
            return None
        if previous.vault_version == entry.version:
            return None
    same = previous is not None and _holds(mesh, key, previous, entry.value)
    version = (previous.version if same else previous.version + 1) if previous else 1
    stored = SecretValue(
        name=entry.name,
        scope=entry.scope,
        project=entry.project,
        env=entry.env,
        version=version,
        sealed=seal_value(mesh.public, key, version, entry.value),
        mesh_key=mesh.fingerprint,
        set_by=ACTOR,
        set_at=time.time(),
        vault_version=entry.version,
    )
    term.ensure_held()
    try:
        if found is None or found.value is None:
            await store.create(subjects.SECRETS_BUCKET, key, encode(stored))
        else:
            await store.update(subjects.SECRETS_BUCKET, key, encode(stored), last=found.revision)
    except Conflict:
        log.info("Secret written meanwhile; mirrored next pass. key=%s", key)
        return None
    if not same:
        detail: dict[str, Any] = {"name": entry.name, "scope": entry.scope.value}
        detail |= {"project": entry.project, "env": entry.env, "version": version}
        detail["vault_version"] = entry.version
        await store.record("secret_from_vault", droplet, key, detail, term.fence)
        log.info("Secret from Vault. key=%s version=%d", key, version)
    return Mirrored(key, entry.name, version, changed=not same)


def _holds(mesh: KeyPair, key: str, value: SecretValue, wanted: bytes) -> bool:
    try:
        return open_value(mesh, key, value.version, value.sealed) == wanted
    except SealError:
        return False  # sealed to an older mesh key: written anew


async def roll(
    store: Store,
    term: Term,
    changed: Mapping[str, str],
    allocations: Sequence[Allocation],
    values: Mapping[str, SecretValue],
) -> list[str]:
    """Ask for a restart of every service that gets one of the `changed` values (key ->
    secret name), as `meshctl secret set` does; datastores are left. The services asked."""
    secrets: dict[str, set[str]] = {}
    for key, name in changed.items():
        for service in used_by(key, allocations, values):
            secrets.setdefault(service, set()).add(name)
    by_key = {subjects.alloc_key(a.project, a.env, a.service): a for a in allocations}
    rolled = []
    for service, names in sorted(secrets.items()):
        allocation = by_key[service]
        if ServiceKind(allocation.service_kind).is_datastore:
            continue
        term.ensure_held()
        count = await request_restart(store, allocation, ACTOR)
        detail = {"count": count, "secrets": sorted(names)}
        await store.record("restart_requested", ACTOR, service, detail, term.fence)
        rolled.append(service)
    return rolled


class VaultMirror:
    """The role's link to Vault: a source made from the published settings and the mesh's
    login, made again when either changes and dropped when the term ends."""

    def __init__(self, store: Store, droplet: str) -> None:
        self.store = store
        self.droplet = droplet
        self._source: VaultSource | None = None
        self._made_for: tuple[Any, ...] = ()
        self._pending: dict[str, str] = {}  # value key -> name: rolled once sealed
        self._problem = ""
        self._failures = 0
        self._next_try = 0.0  # monotonic

    async def pull(
        self,
        term: Term,
        mesh: KeyPair,
        state: DesiredState | None,
        values: Mapping[str, SecretValue],
        opened: Opener,
    ) -> bool:
        """Mirror Vault into the mesh's values; True when a value was written."""
        settings = VaultSettings.from_data(state.vault if state else None)
        if state is None or settings is None:
            self.close()
            return False
        try:
            source = self._source_for(settings, values, opened)
            if time.monotonic() < self._next_try:
                return False
            entries = await source.read({p.name: ENVIRONMENTS for p in state.projects})
        except VaultError as err:
            self._failed(term, err)
            return False
        if self._problem:
            log.info("Vault readable again. address=%s", settings.address)
        self._problem, self._failures = "", 0
        written = await mirror(self.store, term, mesh, values, entries, self.droplet)
        self._pending |= {m.key: m.name for m in written if m.changed}
        return bool(written)

    async def roll(
        self, term: Term, allocations: Sequence[Allocation], values: Mapping[str, SecretValue]
    ) -> None:
        """After the role sealed this pass: roll the users of what changed since the last."""
        if self._pending:
            await roll(self.store, term, self._pending, allocations, values)
            self._pending.clear()

    def close(self) -> None:
        """Drop the source (idempotent); the next pull makes a new one."""
        if self._source is not None:
            self._source.close()
        self._source, self._made_for = None, ()

    def _source_for(
        self, settings: VaultSettings, values: Mapping[str, SecretValue], opened: Opener
    ) -> VaultSource:
        keys = {name: subjects.secret_value_key(name) for name in settings.credentials}
        made_for = (settings, *((k, values[k].version) for k in keys.values() if k in values))
        if self._source is not None and made_for == self._made_for:
            return self._source
        self.close()
        missing = [name for name, key in keys.items() if key not in values]
        if missing:
            raise VaultError(
                settings.address,
                f"no login: set the mesh secret {' and '.join(missing)} "
                f"(`meshctl secret set --mesh {missing[0]}`)",
            )
        words = {}
        for name, key in keys.items():
            try:
                words[name] = opened(key, values[key]).decode().strip()
            except (SealError, UnicodeDecodeError):
                raise VaultError(settings.address, f"mesh secret {name} does not open") from None
        credentials = VaultCredentials(
            token=words.get("vault_token"),
            role_id=words.get("vault_role_id"),
            secret_id=words.get("vault_secret_id"),
        )
        self._source, self._made_for = VaultSource(settings, credentials), made_for
        self._failures, self._next_try = 0, 0.0  # new settings or login: try them at once
        return self._source

    def _failed(self, term: Term, err: VaultError) -> None:
        self._next_try = time.monotonic() + delay(self._failures, RETRY_BASE_S, RETRY_CAP_S)
        self._failures += 1
        if str(err) == self._problem:
            return
        self._problem = str(err)
        log.error("Vault cannot be read; the mesh keeps the values it has. error=%s", err)
        detail = {"address": err.address, "error": str(err)}
        self.store.record_soon("vault_unreachable", self.droplet, "vault", detail, term.fence)
