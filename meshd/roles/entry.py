"""The `lb` role: the holder serves the mesh's entry point with its load balancer.

On taking the lease it points the reserved address at its droplet (fenced by the lease), then
renders the configuration from the observed state on every change of node statuses,
allocations, the desired state or the domains' certificates (served over HTTPS from files of
its own: `meshd.agent.tls_files`), and applies it: `nginx -t`, then a graceful reload, and
nothing when the text is what already runs. A configuration the server refuses never replaces
the running one and is recorded as an event. Losing the lease stops the server, so only the
holder listens on the entry address. Push webhooks go to the holder's own agent.

A term that merely *expired* (no renewal got through: JetStream elects a new stream leader
for a few seconds after a nats-server dies) keeps the server serving its last configuration
for up to `LINGER_S`, until another holder's lease appears, and `HANDOVER_S` after that while
the successor starts its own; taking the lease again picks the running server up. Without
that, every death of a JetStream droplet would take the entry point down for the length of
an election. Nothing is reloaded while lingering.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from meshd.agent.config import AGENT_HTTP_PORT, DropletIdentity, MeshConfig
from meshd.agent.lease import Term
from meshd.agent.loops import SETTLE_S
from meshd.agent.meshview import MeshView
from meshd.agent.store import Store, StoreUnavailable
from meshd.agent.tls_files import ServedCertificates
from meshd.core.routes import sites, upstreams
from plugins.lb import ConfigRejected, LbConfig, LbContext, LbUnavailable, LoadBalancer, load_lb
from plugins.providers import Provider, ReservedAddresses
from protocol import subjects
from protocol.codec import decode
from protocol.errors import ProtocolError
from protocol.messages import Lease

log = logging.getLogger(__name__)
RESYNC_S = 2.0  # the server is checked this often (a dead one is started again)
RENDER_EVERY_S = 10.0  # unchanged inputs are rendered again this often (reports go stale)
RETRY_S = 0.25  # after the server could not apply a configuration (e.g. its address is busy)
LINGER_S = 10.0  # longer than a JetStream leader election (about 5 s)
HANDOVER_S = 3.0  # a lingering server serves on this long once a successor holds the lease
LEADER_CHECK_S = 10.0  # how often the holder looks who leads the leases stream


class EntryPoint:
    role = subjects.Role.LB

    def __init__(
        self,
        store: Store,
        identity: DropletIdentity,
        config: MeshConfig,
        provider: Provider,
        view: MeshView,
        directory: Path,
        secret: Callable[[str], bytes | None] = lambda _: None,
        lb_name: str = "nginx",
    ) -> None:
        self.store = store
        self.identity = identity
        self.config = config
        self.provider = provider
        self.view = view  # kept current by the agent's watches
        self.directory = directory
        self.lb_name = lb_name
        self._reported: str | None = None  # the last problem recorded, so it is said once
        self._lingering: tuple[LoadBalancer, asyncio.Task[None]] | None = None
        self._applied: _Applied | None = None  # what the server runs, and from what
        self.certificates = ServedCertificates(store, directory / "tls", secret)

    @property
    def listen(self) -> str:
        return self.config.entry_listen(self.identity.address)

    async def lead(self, term: Term) -> None:
        lb = await self._pick_up() or load_lb(
            self.lb_name,
            LbContext(directory=self.directory, logger=logging.getLogger("plugins.lb")),
        )
        view = self.view
        certificates = asyncio.create_task(
            self.certificates.mirror(view.changed.set), name="lb-certificates"
        )
        try:
            await self._take_address(term)
            next_check = 0.0
            while True:
                if time.monotonic() >= next_check:
                    await self._leases_led_elsewhere(term)
                    next_check = time.monotonic() + LEADER_CHECK_S
                view.changed.clear()
                applied = True
                if view.ready:
                    applied = await self.balance(term, lb, view)
                else:
                    await lb.ensure_running()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(view.changed.wait(), RESYNC_S if applied else RETRY_S)
                await asyncio.sleep(SETTLE_S)
        finally:
            certificates.cancel()
            await asyncio.gather(certificates, return_exceptions=True)
            if term.expired:
                log.warning("Lease expired; serving on until another holder shows up.")
                self._lingering = (lb, asyncio.create_task(self._linger(lb, term.revision)))
            else:
                await lb.stop()

    async def _leases_led_elsewhere(self, term: Term) -> None:
        """The holder's own death must not cost the leases stream an election before its
        lease can expire and be taken: another server should lead that stream."""
        term.ensure_held()
        try:
            peer = await self.store.lead_elsewhere(subjects.LEASES_BUCKET, self.identity.name)
        except StoreUnavailable as err:
            log.info("Leases stream leader not moved. error=%s", err)
            return
        if peer is not None:
            log.info("Leases stream leadership handed over. to=%s", peer)
            self.store.record_soon(
                "leases_leader_moved",
                self.identity.name,
                subjects.LEASES_BUCKET,
                {"to": peer},
                fence=term.fence,
            )

    async def _pick_up(self) -> LoadBalancer | None:
        """The server still serving from an expired term, if any."""
        if self._lingering is None:
            return None
        lb, lingering = self._lingering
        self._lingering = None
        lingering.cancel()
        await asyncio.gather(lingering, return_exceptions=True)
        return lb

    async def _linger(self, lb: LoadBalancer, revision: int) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LINGER_S):
                await self._successor(revision)
            # A successor holds the lease: its server starts beside this one (reuseport).
            await asyncio.sleep(HANDOVER_S)
        self._lingering = None
        await lb.stop()
        log.info("Load balancer stopped after its lease expired.")

    async def _successor(self, revision: int) -> None:
        """Returns once the lease shows another holder, written after `revision` (this
        holder's last renewal): an older entry a watch may deliver again is no successor."""
        while True:
            try:
                async for entry in self.store.watch(
                    subjects.LEASES_BUCKET, subjects.lease_key(self.role)
                ):
                    if entry is None or entry.value is None or entry.revision <= revision:
                        continue
                    if _holder(entry.value) != self.identity.name:
                        log.info("Another lb holder took over. revision=%d", entry.revision)
                        return
            except StoreUnavailable as err:  # the store is what is failing: look again
                log.debug("Lease not readable while lingering. error=%s", err)
            await asyncio.sleep(RETRY_S)

    async def close(self) -> None:
        """The agent stops: a server left serving from an expired term stops too."""
        lb = await self._pick_up()
        if lb is not None:
            await lb.stop()

    async def _take_address(self, term: Term) -> None:
        address = self.config.entry.get("address")
        if address and isinstance(self.provider, ReservedAddresses):
            await self.provider.assign_reserved_address(address, self.identity.id, fence=term.token)
        term.ensure_held()
        self.store.record_soon(
            "entry_assigned",
            self.identity.name,
            self.listen,
            {"url": self.config.entry_url(self.identity.address)},
            fence=term.fence,
        )

    async def balance(self, term: Term, lb: LoadBalancer, view: MeshView) -> bool:
        """Render from the mirrored state (kept by watches: no reads per change) and apply;
        False when the server could not take it. Inputs the same objects as those last
        applied to the same server (the view replaces a part whole when it changes) are
        rendered again only every `RENDER_EVERY_S`: at rest the holder only checks that the
        server runs."""
        served = await asyncio.to_thread(self.certificates.current)  # writes files
        inputs = (lb, view.allocations, view.failures, view.nodes, view.state, served)
        if self._unchanged(inputs):
            if await lb.ensure_running():
                self.store.record_soon(
                    "lb_restarted", self.identity.name, self.listen, {}, fence=term.fence
                )
            return True
        # A droplet whose failure is confirmed leaves at once, not when its report goes stale.
        found = upstreams(view.hosted().values(), view.alive(), time.time())
        config = LbConfig(
            listen=self.listen,
            upstreams=found,
            sites=sites(view.state, found, served) if view.state else (),
            agent=f"{self.identity.address}:{AGENT_HTTP_PORT}",  # hooks, ACME challenges
            tls_listen=self.config.entry_tls_listen(self.identity.address),
        )
        term.ensure_held()
        try:
            # Routes equal to those the server runs (a report changed, not what it routes):
            # nothing to render.
            if not self._runs(lb, config) and await lb.apply(config):
                log.info("Load balancer configured. upstreams=%d", len(found))
            elif await lb.ensure_running():
                self.store.record_soon(
                    "lb_restarted", self.identity.name, self.listen, {}, fence=term.fence
                )
            self._reported = None
            self._applied = _Applied(inputs, config, time.monotonic())
            return True
        except (ConfigRejected, LbUnavailable) as err:
            if err.reason != self._reported:
                self._reported = err.reason
                name = "lb_config_rejected" if isinstance(err, ConfigRejected) else "lb_unavailable"
                log.error("Load balancer problem. error=%s", err.reason)
                self.store.record_soon(
                    name, self.identity.name, self.listen, {"error": err.reason}, term.fence
                )
            return False

    def _unchanged(self, inputs: tuple[object, ...]) -> bool:
        """The same server and view parts (by identity) as last applied, not long ago."""
        last = self._applied
        if last is None or time.monotonic() - last.at >= RENDER_EVERY_S:
            return False
        *parts, served = inputs
        *applied, applied_served = last.inputs
        return all(a is b for a, b in zip(parts, applied, strict=True)) and served == applied_served

    def _runs(self, lb: LoadBalancer, config: LbConfig) -> bool:
        """`lb` runs `config` already (its inputs changed, not its routes)."""
        last = self._applied
        return last is not None and last.inputs[0] is lb and last.config == config


class _Applied(NamedTuple):
    inputs: tuple[object, ...]  # the server first, the view's parts, the certificates
    config: LbConfig
    at: float  # monotonic


def _holder(value: bytes) -> str | None:
    """Who holds a lease (None when its value cannot be read: somebody else wrote it)."""
    try:
        return decode(value, Lease).holder
    except ProtocolError:
        return None
