"""The `secrets` role (docs/secrets.md): holds the mesh key and keeps every secret sealed to
exactly the droplets that need it (`meshd.core.secret_plan`).

The mesh key is an X25519 pair made by the first holder: its public half is `mesh-key` in
`mesh_secrets` (what `meshctl secret set` seals values to), its private half is sealed to
every trusted droplet (`holder.<droplet>`), so whichever of them holds the role next can open
the values. Each pass: make the generated secrets that do not exist yet (`db_password`,
`redis_password` of every project environment that uses them), seal each value a droplet
needs to that droplet's current key, delete what nobody needs any more, and seal the mesh
key to the trusted droplets. Values are opened in memory only; no value reaches a log, an
event or the store in clear. With a vault configured, each pass starts by mirroring its
secrets into the values and ends by rolling the services whose secret changed there
(`meshd.roles.vault_mirror`, joined in by the agent).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Protocol, TypeVar

from meshd.agent.lease import Term
from meshd.agent.loops import run_on_changes
from meshd.agent.meshkey import (
    ESCROW,
    holder_entry,
    mesh_public_key,
    open_mesh_key,
    seal_keys,
    trusted_droplets,
)
from meshd.agent.meshview import MeshView
from meshd.agent.sealkey import DropletKeys
from meshd.agent.store import Conflict, Store
from meshd.core.sealing import (
    KeyPair,
    entry_context,
    fingerprint,
    from_text,
    open_value,
    random_secret,
    seal,
    seal_value,
    to_text,
)
from meshd.core.secret_plan import (
    Need,
    Sealing,
    missing_generated,
    needs,
    sealings,
    webhook_projects,
)
from meshd.core.spec import DesiredState
from protocol import subjects
from protocol.base import Message
from protocol.codec import decode, encode
from protocol.errors import ProtocolError
from protocol.messages import Allocation, NodeStatus
from protocol.secrets import MeshKey, SealedSecret, SecretScope, SecretValue

log = logging.getLogger(__name__)
M = TypeVar("M", bound=Message)
RESYNC_S = 10.0


def seal_key_of(data: bytes) -> Hashable:
    """What the role reacts to in a node report: the droplet's key, not each report."""
    try:
        return decode(data, NodeStatus).seal_key
    except ProtocolError:
        return None


class VaultLink(Protocol):
    """The role's mirror of a vault (`meshd.roles.vault_mirror.VaultMirror`)."""

    async def pull(
        self,
        term: Term,
        mesh: KeyPair,
        state: DesiredState | None,
        values: dict[str, SecretValue],
        opened: Callable[[str, SecretValue], bytes],
    ) -> bool: ...

    async def roll(
        self, term: Term, allocations: Sequence[Allocation], values: dict[str, SecretValue]
    ) -> None: ...

    def close(self) -> None: ...


class SecretKeeper:
    role = subjects.Role.SECRETS

    def __init__(
        self,
        store: Store,
        view: MeshView,
        droplet: str,
        keys: DropletKeys,
        vault: VaultLink | None = None,
    ) -> None:
        self.store = store
        self.view = view
        self.droplet = droplet
        self.keys = keys
        self.vault = vault
        self._mesh: KeyPair | None = None  # the mesh key, once opened this term
        self._opened: dict[tuple[str, int], bytes] = {}  # values opened this term
        self._problem = ""

    async def lead(self, term: Term) -> None:
        """Only a droplet that can open the mesh key competes for the role (the agent's
        `may_keep_secrets`); one that still cannot says so once and waits for it."""
        try:
            await run_on_changes(
                self.store,
                [
                    (subjects.SECRETS_BUCKET, subjects.SECRET_VALUES),
                    (subjects.SECRETS_BUCKET, subjects.ESCROW_KEY),
                    (subjects.SECRETS_BUCKET, subjects.MESH_KEY),  # adopted by restore-mesh
                    (subjects.ALLOC_BUCKET, ">"),
                    (subjects.FAILURES_BUCKET, ">"),
                    (subjects.DESIRED_BUCKET, subjects.JETSTREAM_APPLIED_KEY),
                    (subjects.DESIRED_BUCKET, subjects.DESIRED_KEY),  # the vault settings
                ],
                lambda: self.keep(term),
                RESYNC_S,
                when=[(subjects.NODES_BUCKET, ">", seal_key_of)],
            )
        finally:
            self._mesh = None
            self._opened.clear()
            if self.vault is not None:
                self.vault.close()

    async def keep(self, term: Term) -> None:
        await self._forget_replaced_key()
        mesh = self._mesh = self._mesh or await self.mesh_key(term)
        if mesh is None:
            return
        values = await self._values()
        if self.vault is not None and await self.vault.pull(
            term, mesh, self.view.state, values, lambda key, v: self._open(mesh, key, v)
        ):
            values = await self._values()
        allocations = list(self.view.hosted().values())
        if await self._generate(term, mesh, allocations, values):
            values = await self._values()
        nodes = self.view.nodes
        publics = seal_keys(nodes)
        trust = await trusted_droplets(self.store, nodes)
        mesh_names = {v.name for v in values.values() if v.scope is SecretScope.MESH}
        plan = sealings(
            needs(allocations, mesh_names, trust, webhook_projects(values)),
            values,
            {d: fingerprint(p) for d, p in publics.items()},
        )
        sealed = removed = 0
        existing = await self._entries(subjects.SECRETS_SEALED, SealedSecret)
        for key, sealing in plan.items():
            if _current(existing.get(key), sealing):
                continue
            term.ensure_held()
            value = self._open(mesh, sealing.source, values[sealing.source])
            box = to_text(
                seal(publics[sealing.need.droplet], value, entry_context(key, sealing.version))
            )
            await self.store.put(
                subjects.SECRETS_BUCKET, key, encode(_sealed(sealing, box, term.fence))
            )
            sealed += 1
        for key in sorted(set(existing) - set(plan)):
            term.ensure_held()
            await self.store.delete(subjects.SECRETS_BUCKET, key)
            removed += 1
        held = await self._hold_key(term, mesh, trust, publics)
        if sealed or removed or held:
            droplets = sorted({plan[k].need.droplet for k in plan})
            detail = {"sealed": sealed, "removed": removed, "holders": held, "droplets": droplets}
            await self.store.record("secrets_sealed", self.droplet, "secrets", detail, term.fence)
        if self.vault is not None:
            await self.vault.roll(term, allocations, values)

    # --- the mesh key --------------------------------------------------------------------

    async def mesh_key(self, term: Term) -> KeyPair | None:
        """The mesh key pair, made on the first pass ever; None when this droplet cannot open
        it (no holder entry sealed to its key yet)."""
        if await mesh_public_key(self.store) is None:
            return await self._make_mesh_key(term)
        pair = await open_mesh_key(self.store, self.droplet, self.keys)
        if pair is not None:
            self._problem = ""
            return pair
        self._report("the mesh key is not sealed to this droplet's key")
        return None

    async def _forget_replaced_key(self) -> None:
        """Drop the mesh key opened this term, and the values opened with it, once the mesh
        has another one (`meshctl backup restore-mesh` adopts a lost mesh's key): the values
        are sealed to that one now, and a value's key and version may be the same."""
        if self._mesh is None:
            return
        current = await mesh_public_key(self.store)
        if current is None or current.public != self._mesh.public_text:
            log.info(
                "The mesh key was replaced. old=%s new=%s",
                self._mesh.fingerprint,
                current.fingerprint if current else "none",
            )
            self._mesh = None
            self._opened.clear()

    async def _make_mesh_key(self, term: Term) -> KeyPair | None:
        term.ensure_held()
        pair = KeyPair.new()
        made = MeshKey(
            public=pair.public_text,
            fingerprint=pair.fingerprint,
            created_by=self.droplet,
            created_at=time.time(),
        )
        try:
            await self.store.create(subjects.SECRETS_BUCKET, subjects.MESH_KEY, encode(made))
        except Conflict:
            return None  # made meanwhile by another holder: read it next pass
        await self._seal_holder(term, pair, self.droplet, self.keys.current.public)
        log.info("Mesh key made. fingerprint=%s", pair.fingerprint)
        await self.store.record(
            "mesh_key_made", self.droplet, "secrets", {"fingerprint": pair.fingerprint}, term.fence
        )
        return pair

    async def _hold_key(
        self, term: Term, mesh: KeyPair, trust: set[str], publics: dict[str, bytes]
    ) -> int:
        """Seal the mesh key to every trusted droplet's current key; remove it elsewhere."""
        holders = await self._entries(subjects.SECRET_HOLDERS, SealedSecret)
        changed = 0
        for droplet in sorted(trust & set(publics)):
            current = holders.get(subjects.holder_key(droplet))
            if current is not None and current.key == fingerprint(publics[droplet]):
                continue
            await self._seal_holder(term, mesh, droplet, publics[droplet])
            changed += 1
        for key, holder in holders.items():
            if holder.droplet not in trust:
                term.ensure_held()
                await self.store.delete(subjects.SECRETS_BUCKET, key)
                changed += 1
        return changed + await self._escrow(term, mesh)

    async def _escrow(self, term: Term, mesh: KeyPair) -> int:
        """Seal the mesh key to the operator's escrow key (`meshctl secret export-key`), whose
        private half only the operator has: the values open after the whole mesh is lost."""
        entry = await self.store.get(subjects.SECRETS_BUCKET, subjects.ESCROW_KEY)
        if entry is None or entry.value is None:
            return 0
        escrow = decode(entry.value, MeshKey)
        found = await self.store.get(subjects.SECRETS_BUCKET, subjects.ESCROWED_MESH_KEY)
        if found and found.value and decode(found.value, SealedSecret).key == escrow.fingerprint:
            return 0
        escrowed = self._holder_entry(term, mesh, ESCROW, from_text(escrow.public, "key"))
        await self.store.put(subjects.SECRETS_BUCKET, subjects.ESCROWED_MESH_KEY, encode(escrowed))
        detail = {"fingerprint": escrow.fingerprint}
        await self.store.record("mesh_key_escrowed", self.droplet, "secrets", detail, term.fence)
        return 1

    async def _seal_holder(self, term: Term, mesh: KeyPair, droplet: str, public: bytes) -> None:
        holder = self._holder_entry(term, mesh, droplet, public)
        await self.store.put(subjects.SECRETS_BUCKET, subjects.holder_key(droplet), encode(holder))

    def _holder_entry(self, term: Term, mesh: KeyPair, droplet: str, public: bytes) -> SealedSecret:
        term.ensure_held()
        return holder_entry(mesh, droplet, public, term.fence)

    # --- values --------------------------------------------------------------------------

    async def _generate(
        self,
        term: Term,
        mesh: KeyPair,
        allocations: list[Allocation],
        values: dict[str, SecretValue],
    ) -> int:
        made = 0
        for name, project, env in missing_generated(allocations, values):
            term.ensure_held()
            key = subjects.secret_value_key(name, project, env)
            value = SecretValue(
                name=name,
                scope=SecretScope.ENV,
                project=project,
                env=env,
                version=1,
                sealed=seal_value(mesh.public, key, 1, random_secret().encode()),
                mesh_key=mesh.fingerprint,
                set_by=f"meshd@{self.droplet}",
                set_at=time.time(),
                generated=True,
            )
            try:
                await self.store.create(subjects.SECRETS_BUCKET, key, encode(value))
            except Conflict:
                continue  # set by the operator meanwhile
            detail = {"name": name, "project": project, "env": env, "version": 1}
            await self.store.record("secret_generated", self.droplet, key, detail, term.fence)
            made += 1
        return made

    def _open(self, mesh: KeyPair, key: str, value: SecretValue) -> bytes:
        found = self._opened.get((key, value.version))
        if found is None:
            found = self._opened[(key, value.version)] = open_value(
                mesh, key, value.version, value.sealed
            )
        return found

    async def _values(self) -> dict[str, SecretValue]:
        return await self._entries(subjects.SECRET_VALUES, SecretValue)

    async def _entries(self, keys: str, kind: type[M]) -> dict[str, M]:
        found: dict[str, M] = {}
        for key, entry in (await self.store.entries(subjects.SECRETS_BUCKET, keys)).items():
            try:
                found[key] = decode(entry.value or b"", kind)
            except ProtocolError as err:
                log.error("Unreadable secret entry ignored. key=%s error=%s", key, err)
        return found

    def _report(self, problem: str) -> None:
        if problem != self._problem:
            self._problem = problem
            log.error("Secrets role cannot work. droplet=%s problem=%s", self.droplet, problem)
            self.store.record_soon("secrets_stuck", self.droplet, "secrets", {"problem": problem})


def _current(existing: SealedSecret | None, sealing: Sealing) -> bool:
    return (
        existing is not None
        and existing.version == sealing.version
        and existing.key == sealing.key
        and existing.source == sealing.source
    )


def _sealed(sealing: Sealing, box: str, fence: int) -> SealedSecret:
    need: Need = sealing.need
    return SealedSecret(
        droplet=need.droplet,
        name=need.name,
        project=need.project,
        env=need.env,
        source=sealing.source,
        version=sealing.version,
        sealed=box,
        key=sealing.key,
        fence=fence,
    )
