"""The `backups` role (docs/backups.md): every datastore backed up on its schedule (its
project's, else the seed's: `meshd.core.backup_policy`, `schedules`), retention enforced, an
overdue or failed backup a critical alert, and the operator's orders (`meshctl backup
now|restore`, a `BackupOrder` on `mesh.backups.order`) carried out.

A backup is made where its datastore runs: the leader asks that droplet's agent
(`meshd.agent.datastore_backups`), which dumps, encrypts to the mesh key and stores it; the
target's listing is the index (the key says what and when). A restore is opened here with the
mesh key (trusted droplets hold it), sealed again to the key of the droplet that runs the
datastore it replaces, staged, and loaded there, after a safety backup of what it replaces.
Every backup, deletion, restore and failure is an event with the leader's fence."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from meshd.agent.lease import Term
from meshd.agent.meshkey import mesh_public_key
from meshd.agent.meshview import MeshView
from meshd.agent.metrics import backup_seen
from meshd.agent.outbox import queue_critical
from meshd.agent.sealkey import DropletKeys
from meshd.agent.state_documents import state_document
from meshd.agent.store import Received, Store, StoreUnavailable
from meshd.core.backup_policy import (
    ESCROW_OBJECT,
    MESH,
    MESH_PARTS,
    MESH_SCHEDULES,
    BackupName,
    backup_key,
    due,
    expired,
    newest,
    parse_backup_key,
    schedule_of,
)
from meshd.core.sealing import from_text
from meshd.roles.backups.loading import BackupFailed, Loader, seal_document
from meshd.roles.backups.schedules import Overdue, not_running, placed_datastores, retention
from meshd.roles.backups.targets import Targets
from plugins.backups import BackupTarget, BackupTargetConfigError, BackupTargetError, StoredBackup
from protocol import subjects
from protocol.backups import (
    BackupAnswer,
    BackupOrder,
    BackupOrderAnswer,
    BackupRequest,
    ListedBackup,
    VerifiedBackup,
)
from protocol.codec import decode, encode
from protocol.errors import MeshError, ProtocolError
from protocol.messages import Allocation

log = logging.getLogger(__name__)
CHECK_S = 30.0
LOST = "lost its role before it answered; nothing was stored: try again"
RETRY_S = 300.0  # after a failed backup of a datastore
RETRY_DIED_S = 60.0  # after one its droplet's failure cut short (scheduled or asked for)
RETAKES = 5  # retakes of one while its rebuilt datastore starts, then failures alert again


class Backups:
    role = subjects.Role.BACKUPS

    def __init__(
        self,
        store: Store,
        view: MeshView,
        droplet: str,
        keys: DropletKeys,
        work: Path,
        mesh: str,
        secrets: Callable[[str], bytes | None],
    ) -> None:
        self.secrets = secrets  # mesh secrets by name, for the target (`s3_secret_key`)
        self.store, self.view, self.droplet = store, view, droplet
        self.keys = keys
        self.work = work
        self.mesh = mesh
        self._overdue = Overdue()
        self._retry: dict[tuple[str, str, str], float] = {}  # datastore -> not before (epoch)
        self._owed: dict[tuple[str, str, str], float] = {}  # cut short by a death: again at
        self._retakes: dict[tuple[str, str, str], int] = {}  # of the one owed, so far
        self._busy = asyncio.Lock()  # one backup or restore at a time
        # What the target keeps as last listed (`status` asks every second; an S3 listing
        # reads each object's digest), dropped whenever a backup is added or deleted.
        self._listing: tuple[BackupTarget, list[StoredBackup]] | None = None
        self._unsupported: set[tuple[str, str, str]] = set()  # its runtime cannot dump it

    async def lead(self, term: Term) -> None:
        targets = self.targets = Targets(self.store, self.secrets)
        self.loader = Loader(self.store, self.view, self.droplet, self.keys, targets, self.work)
        orders = await self.store.subscribe(
            subjects.BACKUP_ORDERS, lambda message: self._ordered(term, message)
        )
        try:
            while True:
                try:
                    await self.check(term)
                except (StoreUnavailable, BackupTargetError) as err:
                    log.info("Backup check interrupted. error=%s", err)
                except BackupTargetConfigError as err:  # said by `backup target`'s events
                    log.error("The backup target is misconfigured. error=%s", err)
                await asyncio.sleep(CHECK_S)
        finally:
            await orders.unsubscribe()
            await targets.close()

    async def check(self, term: Term) -> None:
        """Back up what is due, delete what is past its retention, alert what is overdue."""
        if not self.view.ready or await mesh_public_key(self.store) is None:
            return  # nothing to encrypt to until the `secrets` role made the mesh key
        target = await self.targets.kept()
        self._listing = None  # each pass reads the target afresh
        listed = await self._listed(target)
        names = [n for b in listed if (n := parse_backup_key(b.key)) is not None]
        latest = newest(names)
        now = time.time()
        for allocation in placed_datastores(self.view.allocations):
            datastore = (allocation.project, allocation.env, allocation.service)
            if datastore in self._unsupported:
                continue
            schedule = schedule_of(
                allocation.service_kind, allocation.backup_every_s, allocation.backup_keep_s
            )
            last = latest.get(datastore)
            backup_seen(datastore, last.at if last else None, schedule.every_s)
            if self._overdue.newly(datastore, last, now, schedule):
                await self._alert(term, _subject(datastore), last, "overdue")
            owed = now >= self._owed.get(datastore, now + 1)  # one its droplet's death cut short
            if not owed and (not due(last, now, schedule) or now < self._retry.get(datastore, 0)):
                continue
            if not_running(self.view, allocation):  # new or rebuilt: taken once it runs
                continue  # (one that never does is alerted as overdue)
            async with self._busy:
                try:
                    await self.take(term, allocation, "again" if owed else "scheduled")
                    self._overdue.backed_up(datastore)
                except (BackupFailed, BackupTargetError) as err:
                    self._retry[datastore] = now + RETRY_S
                    if datastore not in self._unsupported | set(self._owed):
                        await self._alert(term, _subject(datastore), last, str(err))
        for kind, part in MESH_PARTS.items():
            waiting = now < self._retry.get(part, 0.0)
            if waiting or not due(latest.get(part), now, MESH_SCHEDULES[kind]):
                continue
            async with self._busy:
                try:
                    await self.take_mesh(term, kind)
                except (BackupFailed, BackupTargetError) as err:
                    self._retry[part] = now + RETRY_S
                    await self._alert(term, _subject(part), latest.get(part), str(err))
        for old in expired(names, now, retention(self.view.allocations.values())):
            term.ensure_held()
            await target.delete(old.key)
            self._listing = None
            self.store.record_soon(
                "backup_deleted",
                self.droplet,
                _subject(old.datastore),
                {"key": old.key},
                term.fence,
            )

    async def take_mesh(self, term: Term, kind: str, why: str = "scheduled") -> str:
        """Back up the mesh's `state` or its sealed `secrets` now, from here; its key."""
        started = time.monotonic()
        key = backup_key(kind, MESH, MESH, kind, time.time(), secrets.token_hex(3))
        mesh = await mesh_public_key(self.store)
        if mesh is None:
            raise BackupFailed("the mesh has no key yet to encrypt backups to")
        document = await state_document(self.store, kind, self.mesh)
        with self.loader.scratch() as scratch:
            recipient = from_text(mesh.public, "key")
            info = await asyncio.to_thread(seal_document, scratch, document, recipient, key)
            term.ensure_held()
            # First, so that no `secrets` document is kept without what opens it then.
            escrowed = kind == "secrets" and await self.targets.keep_escrow(scratch)
            stored = await (await self.targets.kept()).put(key, scratch / "sealed")
        detail = {
            "key": key,
            "escrow": ESCROW_OBJECT if escrowed else None,
            "why": why,
            "plain_bytes": info.plain_bytes,
            "stored_bytes": stored.size,
            "seconds": round(time.monotonic() - started, 2),
        }
        self.store.record_soon(
            "backup_taken", self.droplet, _subject(MESH_PARTS[kind]), detail, term.fence
        )
        self._listing = None
        return key

    async def take(self, term: Term, allocation: Allocation, why: str) -> str:
        """Back up one datastore now; its key. Raises BackupFailed (after the event)."""
        project, env, service = allocation.project, allocation.env, allocation.service
        key = backup_key(
            allocation.service_kind, project, env, service, time.time(), secrets.token_hex(3)
        )
        term.ensure_held()
        request = BackupRequest(
            project=project, env=env, service=service, key=key, fence=term.fence
        )
        subject = _subject((project, env, service))
        droplet = allocation.droplets[0]
        unready = not_running(self.view, allocation)  # not asked: it would only fail
        if unready is None:
            answer = await self.loader.ask(subjects.backup(droplet), encode(request), droplet)
        else:
            answer = BackupAnswer(error=unready)
        if answer.unsupported:
            self._unsupported.add((project, env, service))
            self.store.record_soon(
                "backup_unsupported", self.droplet, subject, {"why": answer.error}, term.fence
            )
            raise BackupFailed(f"{subject} cannot be backed up: {answer.error}")
        error = answer.error
        moved = None
        if error is None:
            try:
                with self.loader.scratch() as scratch:
                    moved = await self.targets.settle(key, scratch)
            except BackupTargetError as err:  # the target is down or full: staged, not kept
                error = str(err)
                with contextlib.suppress(BackupTargetError):
                    # A copy only the staging area holds would be listed and pruned by no one.
                    await self.targets.staging.delete(key)
        if error is not None:
            datastore = (project, env, service)
            tries = self._retakes.get(datastore, 0)
            self._owed.pop(datastore, None)
            # Again a minute later: cut short by its droplet's death (alerted as such), or
            # asked for while it does not run (then taken once it does); or a retake that found
            # the rebuilt datastore not back yet, RETAKES times at most, then alerted.
            again = why == "again" or unready is not None
            if droplet in self.view.failures or (again and tries < RETAKES):
                self._owed[datastore] = time.time() + RETRY_DIED_S
                self._retakes[datastore] = tries + 1 if why == "again" else 0
                error += "; taken again once it runs"
            failed = {"key": key, "why": why, "error": error}
            self.store.record_soon("backup_failed", self.droplet, subject, failed, term.fence)
            raise BackupFailed(f"backup of {subject} failed: {error}")
        detail = {
            "key": key,
            "target": "objects" if moved is None else (await self.targets.kept()).name,
            "why": why,
            "plain_bytes": answer.plain_bytes,
            "stored_bytes": answer.stored_bytes,
            "seconds": answer.seconds,
        }
        self.store.record_soon("backup_taken", self.droplet, subject, detail, term.fence)
        self._owed.pop((project, env, service), None)
        log.info("Backup taken. key=%s seconds=%.1f", key, answer.seconds)
        self._listing = None
        return key

    async def restore(self, term: Term, name: BackupName, allocation: Allocation) -> str:
        """Load backup `name` into `allocation`'s datastore, after a safety backup of it; the
        safety backup's key."""
        subject = _subject((allocation.project, allocation.env, allocation.service))
        if name.kind != allocation.service_kind:
            raise BackupFailed(
                f"{name.key} holds a {name.kind}, {subject} is a {allocation.service_kind}"
            )
        safety = await self.take(term, allocation, f"before restoring {name.key}")
        answer = await self.loader.load(term, name, allocation, drill=False)
        detail = {"from": name.key, "safety": safety, "seconds": answer.seconds}
        if answer.error is not None:
            detail["error"] = answer.error
            self.store.record_soon("restore_failed", self.droplet, subject, detail, term.fence)
            raise BackupFailed(
                f"restore of {subject} failed: {answer.error}; the safety "
                f"backup {safety} holds what it had"
            )
        self.store.record_soon("backup_restored", self.droplet, subject, detail, term.fence)
        return safety

    async def verify(self, term: Term, name: BackupName, allocation: Allocation) -> VerifiedBackup:
        """A drill: backup `name` loaded into a scratch instance beside `allocation`'s
        datastore, counted and removed; a failure is a critical alert too."""
        subject = _subject(name.datastore)
        try:
            answer = await self.loader.load(term, name, allocation, drill=True)
        except (BackupFailed, BackupTargetError) as err:
            answer = BackupAnswer(error=str(err))
        detail = {"key": name.key, "counted": answer.counted, "seconds": answer.seconds}
        if answer.error is None:
            self.store.record_soon("backup_verified", self.droplet, subject, detail, term.fence)
        else:
            detail["error"] = answer.error
            self.store.record_soon("backup_unusable", self.droplet, subject, detail, term.fence)
            await self._alert(
                term, subject, name, f"the newest backup does not load: {answer.error}"
            )
        return VerifiedBackup(
            key=name.key, error=answer.error, counted=answer.counted, seconds=answer.seconds
        )

    async def _ordered(self, term: Term, message: Received) -> None:
        started = time.monotonic()
        try:
            order = decode(message.data, BackupOrder)
            async with self._busy:
                answer = await self._carry_out(term, order)
        except asyncio.CancelledError:  # the term ended: say so, or meshctl waits it out
            if order.action == "now" and order.service:  # again if this agent leads again
                self._owed[(order.project, order.env, order.service)] = time.time() + RETRY_DIED_S
            lost = BackupOrderAnswer(error=f"the backups leader ({self.droplet}) {LOST}")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(message.respond(encode(lost))), 2.0)
            raise
        except ProtocolError as err:
            answer = BackupOrderAnswer(error=f"unreadable order: {err}")
        except (MeshError, LookupError) as err:
            answer = BackupOrderAnswer(error=str(err))
        seconds = round(time.monotonic() - started, 2)
        await message.respond(encode(dataclasses.replace(answer, seconds=seconds)))

    async def _carry_out(self, term: Term, order: BackupOrder) -> BackupOrderAnswer:
        target = await self.targets.kept()
        if order.action == "list":
            listed = tuple(
                ListedBackup(key=b.key, size=b.size, sha256=b.sha256, created_at=b.created_at)
                for b in await self._listed(target)
            )
            return BackupOrderAnswer(listed=listed, target=target.name)
        if order.action == "verify":
            names = [n for b in await self._listed(target) if (n := parse_backup_key(b.key))]
            running = {
                (a.project, a.env, a.service): a for a in placed_datastores(self.view.allocations)
            }
            chosen = [
                (name, running[datastore])
                for datastore, name in sorted(newest(names).items())
                if datastore in running
                and order.project in ("", name.project)
                and order.env in ("", name.env)
            ]
            verified = [await self.verify(term, name, a) for name, a in chosen]
            return BackupOrderAnswer(verified=tuple(verified), target=target.name)
        if order.action == "mesh":  # the mesh's own state and secrets (`backup now --mesh`)
            taken = [
                await self.take_mesh(term, kind, f"asked by {order.by}") for kind in MESH_PARTS
            ]
            return BackupOrderAnswer(taken=tuple(taken))
        mine = [
            a
            for a in placed_datastores(self.view.allocations)
            if (a.project, a.env) == (order.project, order.env)
            and order.service in (None, a.service)
        ]
        where = " ".join(p for p in (order.project, order.env, order.service) if p)
        if not mine:
            raise LookupError(f"no datastore of {where} runs in the mesh")
        if order.action == "now":
            taken = [await self.take(term, a, f"asked by {order.by}") for a in mine]
            return BackupOrderAnswer(taken=tuple(taken))
        if order.action != "restore" or order.key is None:
            raise LookupError(f"unknown order {order.action!r}")
        name = parse_backup_key(order.key)
        if name is None or order.key not in {b.key for b in await self._listed(target)}:
            raise LookupError(f"no backup {order.key} (`meshctl backup list`)")
        into = next((a for a in mine if a.service == name.service), None)
        if into is None and len(mine) == 1:
            into = mine[0]
        if into is None:
            raise LookupError(f"{where} has no {name.service} to restore {order.key} into")
        return BackupOrderAnswer(safety=await self.restore(term, name, into))

    async def _listed(self, target: BackupTarget) -> list[StoredBackup]:
        if self._listing is None or self._listing[0] is not target:
            self._listing = (target, await target.list())
        return self._listing[1]

    async def _alert(self, term: Term, subject: str, last: BackupName | None, problem: str) -> None:
        when = (
            "never" if last is None else time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(last.at))
        )
        details = {"datastore": subject, "last backup": when, "problem": problem}
        origin = (self.mesh, self.droplet, term.fence)
        await queue_critical(
            self.store, self.view.notify, f"Backup of {subject}: {problem}"[:90], details, origin
        )
        if problem == "overdue":
            self.store.record_soon(
                "backup_overdue", self.droplet, subject, {"last": when}, term.fence
            )


def _subject(datastore: tuple[str, str, str]) -> str:
    return subjects.alloc_key(*datastore)
