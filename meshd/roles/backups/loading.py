"""How the `backups` leader has a backup loaded where a datastore runs: opened here with the
mesh key, sealed again to the key of that datastore's droplet, staged in the mesh's object
store, and loaded by that droplet's agent (`RestoreRequest` on `mesh.restore.<droplet>`):
into the datastore itself (a restore), or into a scratch instance that is counted and
removed (a drill: `backup verify`). In clear only in a 0700 scratch directory, and only until
it is sealed again."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from pathlib import Path

from meshd.agent.lease import Term
from meshd.agent.meshkey import open_mesh_key
from meshd.agent.meshview import MeshView
from meshd.agent.sealkey import DropletKeys
from meshd.agent.store import Store
from meshd.core.backup_crypto import EncryptedInfo, decrypt_stream, encrypt_stream
from meshd.core.backup_policy import BackupName
from meshd.core.sealing import KeyPair, from_text
from meshd.roles.backups.targets import Targets
from plugins.backups import BackupTargetError
from plugins.fs import scratch_directory
from protocol import subjects
from protocol.backups import BackupAnswer, RestoreRequest
from protocol.codec import decode, encode
from protocol.errors import MeshError
from protocol.messages import Allocation

STAGED = "staging"
ANSWER_WITHIN_S = 900.0  # a dump of a few GB, encrypted, stored or loaded
WATCH_S = 1.0  # how often the droplet asked is looked at while its answer is awaited


class BackupFailed(MeshError):
    """A backup or restore did not happen; the reason says where it stopped."""


class Loader:
    def __init__(
        self,
        store: Store,
        view: MeshView,
        droplet: str,
        keys: DropletKeys,
        targets: Targets,
        work: Path,
    ) -> None:
        self.store = store
        self.view = view
        self.droplet = droplet
        self.keys = keys
        self.targets = targets
        self.work = work

    async def load(
        self, term: Term, name: BackupName, allocation: Allocation, drill: bool
    ) -> BackupAnswer:
        """Have backup `name` loaded into `allocation`'s datastore (or a scratch one)."""
        subject = subjects.alloc_key(allocation.project, allocation.env, allocation.service)
        if name.kind != allocation.service_kind:
            raise BackupFailed(
                f"{name.key} holds a {name.kind}, {subject} is a {allocation.service_kind}"
            )
        droplet = allocation.droplets[0]
        node = self.view.nodes.get(droplet)
        if node is None or not node.seal_key:
            raise BackupFailed(f"{droplet} has not reported its key yet")
        mesh = await open_mesh_key(self.store, self.droplet, self.keys)
        if mesh is None:
            raise BackupFailed(f"the mesh key is not sealed to {self.droplet} yet; try again")
        staged = f"{STAGED}/{secrets.token_hex(8)}.enc"
        staging = self.targets.staging
        with self.scratch() as scratch:
            await (await self.targets.kept()).get(name.key, scratch / "backup")
            await asyncio.to_thread(_reseal, scratch, mesh, name.key, node.seal_key, staged)
            await staging.put(staged, scratch / "staged")
        try:
            term.ensure_held()
            request = RestoreRequest(
                project=allocation.project,
                env=allocation.env,
                service=allocation.service,
                staged=staged,
                fence=term.fence,
                drill=drill,
            )
            return await self.ask(subjects.restore(droplet), encode(request), droplet)
        finally:
            with contextlib.suppress(BackupTargetError):
                await staging.delete(staged)

    async def ask(self, subject: str, data: bytes, droplet: str) -> BackupAnswer:
        """`droplet`'s agent's answer to a backup or restore request. A droplet that fails
        or whose agent restarts meanwhile will never answer (what it was dumping died with
        it): given up at once, not after the full timeout, which would hold every other
        backup and restore up."""
        node = self.view.nodes.get(droplet)
        life = node.incarnation if node is not None else None
        asking = asyncio.ensure_future(self.store.request(subject, data, ANSWER_WITHIN_S))
        try:
            while not (await asyncio.wait({asking}, timeout=WATCH_S))[0]:
                gone = _gone(self.view, droplet, life)
                if gone is not None:
                    return BackupAnswer(error=f"{droplet} {gone} before it answered")
        finally:
            asking.cancel()
        reply = asking.result()
        if reply is None:  # no answer in time, or nobody there to answer
            gone = _gone(self.view, droplet, life)
            if gone is not None:
                return BackupAnswer(error=f"{droplet} {gone} before it answered")
            return BackupAnswer(error=f"no answer on {subject} within {ANSWER_WITHIN_S:.0f} s")
        return decode(reply, BackupAnswer)

    def scratch(self) -> contextlib.AbstractContextManager[Path]:
        return scratch_directory(self.work)


def _gone(view: MeshView, droplet: str, life: int | None) -> str | None:
    """Why `droplet` will not answer any more (None: it may): its failure was confirmed, or
    it reports a new life."""
    if droplet in view.failures:
        return "failed"
    node = view.nodes.get(droplet)
    if node is not None and life is not None and node.incarnation > life:
        return "restarted"
    return None


def seal(scratch: Path, recipient: bytes, key: str) -> EncryptedInfo:
    """`scratch/plain` encrypted to `recipient` as `scratch/sealed`, the clear copy gone."""
    with (scratch / "plain").open("rb") as source, (scratch / "sealed").open("wb") as out:
        info = encrypt_stream(source, out, recipient, key.encode())
    (scratch / "plain").unlink()
    return info


def seal_document(scratch: Path, document: bytes, recipient: bytes, key: str) -> EncryptedInfo:
    """`document` encrypted to `recipient` as `scratch/sealed`."""
    (scratch / "plain").write_bytes(document)
    return seal(scratch, recipient, key)


def _reseal(scratch: Path, mesh: KeyPair, key: str, droplet_key: str, staged: str) -> None:
    with (scratch / "backup").open("rb") as source, (scratch / "plain").open("wb") as out:
        decrypt_stream(source, out, mesh, key.encode())
    seal(scratch, from_text(droplet_key, "droplet key"), staged)
    (scratch / "sealed").rename(scratch / "staged")
