"""The `provisioner` role: the droplets the placement needs vs the provider's droplets.

It creates missing project droplets (they join by themselves from their user_data, or,
where they start bare, once bootstrapped over SSH: `bootstrapper`, again on every pass until
their agent reports), resizes those whose size changed and destroys project droplets that no
placement wants any more, once no allocation points at them. Core droplets (created by
`meshctl up`) are resized but never destroyed here. A droplet that is off while resized
(DigitalOcean) is never resized by its own agent: that leader hands the role over to another
droplet (and stays away for `HAND_OVER_S`), which resizes it; alone, it waits for company.
In a TLS mesh it also writes a droplet a new NATS certificate when the one the droplet reports
comes within half a year of its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from typing import Protocol

from bootstrap import BootstrapFailed
from meshd.agent.certificates import renewal_due
from meshd.agent.config import WEB_TAG, CoreServer, MeshConfig, mesh_tag
from meshd.agent.holds import end_hold, take_hold
from meshd.agent.lease import Term
from meshd.agent.loops import run_on_changes
from meshd.agent.membership import card_of, forget_droplet
from meshd.agent.records import jetstream_servers, last_placement
from meshd.agent.store import Conflict, Store
from plugins.providers import (
    DropletNotFound,
    DropletRecord,
    DropletStatus,
    Provider,
    ProviderError,
)
from protocol import subjects
from protocol.codec import decode, encode
from protocol.messages import Allocation, NodeStatus

log = logging.getLogger(__name__)
RESYNC_S = 5.0
RESIZE, RESIZE_HOLD_S = "resize", 1800.0  # a resize with the droplet off: well within this
HAND_OVER_S = 60.0  # how long a leader that handed the role over stays away from it
RENEW_RETRY_S = 600.0  # a renewal written (or failed) is not tried again before this


class HandOver(Exception):  # noqa: N818 - not an error: the term ends by choice
    """The leader must let another droplet's agent do what it cannot (resize its own)."""


class Bootstrapper(Protocol):
    """Makes a bare droplet a mesh node with this user data, and writes it a new NATS
    certificate (meshd.agent.bootstrapping)."""

    async def __call__(self, record: DropletRecord, user_data: str) -> object: ...

    async def renew_certificate(self, record: DropletRecord) -> object: ...


class Provisioner:
    role = subjects.Role.PROVISIONER

    def __init__(
        self,
        store: Store,
        provider: Provider,
        config: MeshConfig,
        droplet: str,
        bootstrapper: Bootstrapper | None = None,
    ) -> None:
        self.store = store
        self.provider = provider
        self.config = config
        self.droplet = droplet
        self.bootstrapper = bootstrapper
        self._booted: set[str] = set()  # bootstrapped by this leader: ids
        self._renewing: dict[str, float] = {}  # id: not again before (monotonic)
        self._away_until = 0.0

    def hesitation(self) -> float:
        """Seconds to wait before competing for the role (after handing it over)."""
        return max(0.0, self._away_until - time.monotonic())

    async def lead(self, term: Term) -> None:
        try:
            await run_on_changes(
                self.store,
                [
                    (subjects.DESIRED_BUCKET, subjects.PLACEMENT_KEY),
                    (subjects.DESIRED_BUCKET, subjects.JETSTREAM_APPLIED_KEY),
                ],
                lambda: self._provision_or_report(term),
                RESYNC_S,
            )
        except* HandOver as handed:
            reason = handed.exceptions[0]
            log.info("Handing the role over. reason=%s", reason)
            self._away_until = time.monotonic() + HAND_OVER_S
            await self._event(term, "role_handed_over", self.droplet, {"reason": str(reason)})

    async def _provision_or_report(self, term: Term) -> None:
        try:
            await self.provision(term)
        except ProviderError as err:
            log.error("Provisioning failed; retrying. error=%s", err)
            await self.store.record(
                "provision_failed", self.droplet, "provider", {"error": str(err)}, term.fence
            )

    async def provision(self, term: Term) -> None:
        last = await last_placement(self.store)
        if last is None:
            return
        placement = last.placement
        existing = {r.name: r for r in await self.provider.list(mesh_tag(self.config.mesh))}
        missing = [d for d in placement.droplets if d.name not in existing]
        bare = [r for r in existing.values() if await self._bare(r)]
        due = await self._renewals_due([r for r in existing.values() if r not in bare])
        # Concurrently: a droplet takes a while to boot, and they do not depend on each other.
        # Each create ends on its own (one failing never cancels another mid-way, which could
        # leave a droplet the provider made and nobody recorded); the next pass lists the
        # provider's droplets again, so a droplet is never created twice.
        async with asyncio.TaskGroup() as creates:
            for droplet in missing:
                creates.create_task(self._create_or_report(term, droplet.name, droplet.size))
            for bare_droplet in bare:
                creates.create_task(self._bootstrap(term, bare_droplet))
            for renewed in due:
                creates.create_task(self._renew(term, renewed))
        for droplet in placement.droplets:
            record = existing.get(droplet.name)
            if record is not None and record.size != droplet.size:
                if record.name == self.droplet and self.provider.resize_powers_off:
                    await self._hand_over_to_resize(droplet.size)
                    continue
                await self._resize(term, record, droplet.size)
        wanted = {d.name for d in placement.droplets}
        extra = [r for r in existing.values() if WEB_TAG in r.tags and r.name not in wanted]
        if extra:
            busy = await self._droplets_in_use()
            for record in extra:
                if record.name not in busy:
                    await self._destroy(term, record)

    async def _create_or_report(self, term: Term, name: str, size: str) -> None:
        try:
            await self._create(term, name, size)
        except ProviderError as err:
            log.error("Droplet not created; retrying next pass. droplet=%s error=%s", name, err)
            await self._event(term, "provision_failed", name, {"error": str(err)})

    async def _user_data(self) -> str:
        """The new agent's first NATS servers: those that run JetStream now, not only master."""
        config = self.config
        if running := await jetstream_servers(self.store, subjects.JETSTREAM_APPLIED_KEY):
            config = config.with_servers(
                tuple(CoreServer(s.name, s.address) for s in running.servers), running.epoch
            )
        return config.to_json()

    async def _create(self, term: Term, name: str, size: str) -> None:
        term.ensure_held()
        tags = [mesh_tag(self.config.mesh), WEB_TAG]
        record = await self.provider.create(
            name, size, tags=tags, user_data=await self._user_data(), fence=term.token
        )
        log.info("Droplet created. droplet=%s address=%s", name, record.address)
        await self._event(term, "droplet_created", name, {"size": size, "id": record.id})
        # Announce the address before the agent boots, so that the scheduler writes the final
        # environments (DB_HOST, ...) before any instance starts with a provisional one.
        booting = NodeStatus(
            droplet=name,
            address=record.address,
            incarnation=0,
            size=size,
            roles=(),
            instances=(),
            updated_at=time.time(),
        )
        for bucket, entry in (
            (subjects.INDEX_BUCKET, card_of(booting)),
            (subjects.NODES_BUCKET, booting),
        ):
            with contextlib.suppress(Conflict):
                await self.store.create(bucket, subjects.node_key(name), encode(entry))
        if self.bootstrapper is not None:
            await self._bootstrap(term, record)

    async def _resize(self, term: Term, record: DropletRecord, size: str) -> None:
        """Resize; a droplet that is off meanwhile is held, so that no peer calls it dead."""
        term.ensure_held()
        off = self.provider.resize_powers_off
        if off:
            await take_hold(self.store, record.name, RESIZE_HOLD_S, RESIZE, self.droplet,
                            longer=True)  # fmt: skip
        try:
            await self.provider.resize(record.id, size, fence=term.token)
        finally:
            if off:
                await end_hold(self.store, record.name, RESIZE)
        await self._event(term, "droplet_resized", record.name, {"size": size})
        if self.bootstrapper is not None:  # its droplet.json says its new size
            await self._bootstrap(term, dataclasses.replace(record, size=size))

    async def _hand_over_to_resize(self, size: str) -> None:
        """Raise HandOver when another droplet's agent reports (it will resize this one)."""
        others = [
            entry for key, entry in (await self.store.entries(subjects.NODES_BUCKET)).items()
            if key != subjects.node_key(self.droplet) and entry.value is not None
            and decode(entry.value, NodeStatus).incarnation > 0
        ]  # fmt: skip
        if others:
            raise HandOver(f"{self.droplet} must be off to become {size}")
        log.info("Not resizing this droplet while no other agent could. size=%s", size)

    async def _bare(self, record: DropletRecord) -> bool:
        """A project droplet to bootstrap (again): on, and its agent has never reported."""
        if self.bootstrapper is None or record.id in self._booted or WEB_TAG not in record.tags:
            return False
        if record.status is not DropletStatus.ACTIVE or not record.address:
            return False
        report = await self.store.get(subjects.NODES_BUCKET, subjects.node_key(record.name))
        return (
            report is None
            or report.value is None
            or (decode(report.value, NodeStatus).incarnation == 0)
        )

    async def _bootstrap(self, term: Term, record: DropletRecord) -> None:
        """Bootstrap over SSH; a failure is reported and the droplet kept, tried again next pass."""
        assert self.bootstrapper is not None
        term.ensure_held()
        started = time.monotonic()
        try:
            await self.bootstrapper(record, await self._user_data())
        except BootstrapFailed as err:
            log.error("Droplet not bootstrapped; retrying next pass. droplet=%s error=%s",
                      record.name, err)  # fmt: skip
            await self._event(term, "bootstrap_failed", record.name,
                              {"step": err.step, "error": err.reason})  # fmt: skip
            return
        self._booted.add(record.id)
        seconds = round(time.monotonic() - started, 2)
        log.info("Droplet bootstrapped. droplet=%s seconds=%.1f", record.name, seconds)
        await self._event(term, "droplet_bootstrapped", record.name, {"seconds": seconds})

    async def _renewals_due(self, records: list[DropletRecord]) -> list[DropletRecord]:
        """A TLS mesh's droplets, on, whose agents report a certificate that ends soon (the
        reports read once a pass)."""
        if self.bootstrapper is None or not self.config.tls_ca:
            return []
        now, reports = time.time(), await self.store.entries(subjects.NODES_BUCKET)
        due = []
        for record in records:
            report = reports.get(subjects.node_key(record.name))
            if report is None or report.value is None or not record.address:
                continue
            if record.status is not DropletStatus.ACTIVE:
                continue
            node = decode(report.value, NodeStatus)
            waiting = time.monotonic() < self._renewing.get(record.id, 0.0)
            if node.incarnation > 0 and renewal_due(node.tls_expires, now) and not waiting:
                due.append(record)
        return due

    async def _renew(self, term: Term, record: DropletRecord) -> None:
        assert self.bootstrapper is not None
        term.ensure_held()
        self._renewing[record.id] = time.monotonic() + RENEW_RETRY_S
        try:
            await self.bootstrapper.renew_certificate(record)
        except BootstrapFailed as err:
            log.error("NATS certificate not renewed. droplet=%s error=%s", record.name, err)
            await self._event(term, "certificate_renewal_failed", record.name,
                              {"step": err.step, "error": err.reason})  # fmt: skip
            return
        log.info("NATS certificate renewed. droplet=%s", record.name)
        await self._event(term, "certificate_renewed", record.name, {})

    async def _destroy(self, term: Term, record: DropletRecord) -> None:
        term.ensure_held()
        with contextlib.suppress(DropletNotFound):
            await self.provider.destroy(record.id, fence=term.token)
        await forget_droplet(self.store, record.name)  # read after the destroy
        log.info("Droplet destroyed. droplet=%s", record.name)
        await self._event(term, "droplet_destroyed", record.name, {"id": record.id})

    async def _droplets_in_use(self) -> set[str]:
        """Droplets that run instances, or a JetStream server (chosen, or still running one
        until the state has moved off it: destroying it first could take the quorum)."""
        used: set[str] = set()
        for entry in (await self.store.entries(subjects.ALLOC_BUCKET)).values():
            if entry.value is not None:
                used.update(decode(entry.value, Allocation).droplets)
        for key in (subjects.JETSTREAM_KEY, subjects.JETSTREAM_APPLIED_KEY):
            if servers := await jetstream_servers(self.store, key):
                used.update(s.name for s in servers.servers)
        return used

    async def _event(self, term: Term, name: str, droplet: str, detail: dict[str, object]) -> None:
        await self.store.record(name, self.droplet, droplet, dict(detail), term.fence)
