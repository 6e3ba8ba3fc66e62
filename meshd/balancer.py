"""The `lb` role: the holder serves the mesh's entry point with its load balancer.

On taking the lease it points the reserved address at its droplet (fenced by the lease), then
renders the configuration from the observed state on every change of node statuses,
allocations or the desired state, and applies it: `nginx -t`, then a graceful reload, and
nothing when the text is what already runs. A configuration the server refuses never replaces
the running one and is recorded as an event. Losing the lease stops the server, so only the
holder listens on the entry address.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from meshd.lbconfig import LbConfig, render_nginx, sites, upstreams
from meshd.lease import Term
from meshd.loops import repeat_on_changes
from meshd.meshconfig import DropletIdentity, MeshConfig
from meshd.spec import DesiredState
from meshd.store import Store, StoreUnavailable
from plugins.lb import ConfigRejected, LbContext, LbUnavailable, LoadBalancer, load_lb
from plugins.providers import Provider, ReservedAddresses
from protocol import subjects
from protocol.codec import decode
from protocol.errors import ProtocolError
from protocol.messages import Allocation, NodeStatus
from protocol.messages import DesiredState as DesiredMessage

log = logging.getLogger(__name__)
RESYNC_S = 2.0
DEFAULT_ENTRY_PORT = 80


def entry_url(config: MeshConfig, fallback_address: str) -> str:
    address = config.entry.get("address") or fallback_address
    return f"http://{address}:{config.entry.get('port', DEFAULT_ENTRY_PORT)}"


class Balancer:
    role = subjects.Role.LB

    def __init__(
        self,
        store: Store,
        identity: DropletIdentity,
        config: MeshConfig,
        provider: Provider,
        directory: Path,
        lb_name: str = "nginx",
    ) -> None:
        self.store = store
        self.identity = identity
        self.config = config
        self.provider = provider
        self.directory = directory
        self.lb_name = lb_name
        self._reported: str | None = None  # the last problem recorded, so it is said once

    @property
    def listen(self) -> str:
        address = self.config.entry.get("address") or self.identity.address
        return f"{address}:{self.config.entry.get('port', DEFAULT_ENTRY_PORT)}"

    async def lead(self, term: Term) -> None:
        lb = load_lb(
            self.lb_name,
            LbContext(directory=self.directory, logger=logging.getLogger("plugins.lb")),
        )
        try:
            await self._take_address(term)
            watched = [
                (subjects.NODES_BUCKET, ">"),
                (subjects.ALLOC_BUCKET, ">"),
                (subjects.DESIRED_BUCKET, subjects.DESIRED_KEY),
            ]
            await repeat_on_changes(self.store, watched, lambda: self.balance(term, lb), RESYNC_S)
        finally:
            await lb.stop()

    async def _take_address(self, term: Term) -> None:
        address = self.config.entry.get("address")
        if address and isinstance(self.provider, ReservedAddresses):
            await self.provider.assign_reserved_address(address, self.identity.id, fence=term.fence)
        term.check()
        await self.store.record(
            "entry_assigned",
            self.identity.name,
            self.listen,
            {"url": entry_url(self.config, self.identity.address)},
            fence=term.fence,
        )

    async def balance(self, term: Term, lb: LoadBalancer) -> None:
        try:
            nodes, allocations, state = await self._observed()
        except StoreUnavailable as err:
            # Keep serving what runs; the next change or resync renders again.
            log.warning("Observed state unreadable; keeping the configuration. error=%s", err)
            await lb.ensure_running()
            return
        found = upstreams(allocations.values(), nodes, time.time())
        text = render_nginx(
            LbConfig(
                listen=self.listen,
                run_dir=str(lb.run_dir),
                upstreams=found,
                sites=sites(state, found) if state else (),
            )
        )
        term.check()
        try:
            if await lb.apply(text):
                log.info("Load balancer configured. upstreams=%d", len(found))
            elif await lb.ensure_running():
                await self.store.record(
                    "lb_restarted", self.identity.name, self.listen, {}, fence=term.fence
                )
            self._reported = None
        except (ConfigRejected, LbUnavailable) as err:
            if err.reason != self._reported:
                self._reported = err.reason
                name = "lb_config_rejected" if isinstance(err, ConfigRejected) else "lb_unavailable"
                log.error("Load balancer problem. error=%s", err.reason)
                await self.store.record(
                    name, self.identity.name, self.listen, {"error": err.reason}, term.fence
                )

    async def _observed(
        self,
    ) -> tuple[dict[str, NodeStatus], dict[str, Allocation], DesiredState | None]:
        nodes = await self._decoded(subjects.NODES_BUCKET, NodeStatus)
        allocations = await self._decoded(subjects.ALLOC_BUCKET, Allocation)
        state = None
        entry = await self.store.get(subjects.DESIRED_BUCKET, subjects.DESIRED_KEY)
        if entry is not None and entry.value is not None:
            try:
                state = DesiredState.from_data(decode(entry.value, DesiredMessage).spec)
            except (ProtocolError, KeyError, TypeError, ValueError) as err:
                log.warning("Desired state unreadable; no domains. error=%s", err)
        return nodes, allocations, state

    async def _decoded(self, bucket: str, kind: Any) -> dict[str, Any]:
        result = {}
        for key, entry in (await self.store.entries(bucket)).items():
            if entry.value is None:
                continue
            try:
                result[key] = decode(entry.value, kind)
            except ProtocolError as err:
                log.warning("Invalid entry ignored. bucket=%s key=%s error=%s", bucket, key, err)
        return result
