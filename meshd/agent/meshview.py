"""What an agent knows of the whole mesh, kept current by its watches: every droplet's report,
every allocation, the desired state, the confirmed failures and the operator's detection
holds. The reconciler, the load balancer and the failure detector read it; nothing here reads
the store, so a new lb holder can render at once, even while JetStream elects."""

from __future__ import annotations

import asyncio
import logging

from meshd.core.displacement import hosted
from meshd.core.notify_settings import NotifySettings
from meshd.core.spec import DesiredState
from protocol import subjects
from protocol.messages import (
    Allocation,
    DetectionHold,
    FailureRecord,
    NodeStatus,
    PublishedSpec,
)

log = logging.getLogger(__name__)


class MeshView:
    """Each part replaced whole by its mirror (`loops.mirror_bucket`); `changed` set then."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeStatus] = {}
        self.allocations: dict[str, Allocation] = {}
        self.state: DesiredState | None = None
        self.failures: dict[str, FailureRecord] = {}
        self.holds: dict[str, DetectionHold] = {}  # by droplet
        self.changed = asyncio.Event()
        self._seen: set[str] = set()

    @property
    def ready(self) -> bool:
        """Node reports and allocations have both been read once."""
        return {"nodes", "allocations"} <= self._seen

    @property
    def knows_allocations(self) -> bool:
        return "allocations" in self._seen

    @property
    def notify(self) -> NotifySettings:
        """How the operator is told, from the desired state (nothing configured without one)."""
        return NotifySettings.from_data(self.state.notify if self.state else None)

    def held(self, droplet: str, now: float) -> bool:
        """The operator holds off the failure detection of `droplet` (`meshctl hold`)."""
        hold = self.holds.get(droplet)
        return hold is not None and hold.holds(now)

    def alive(self) -> dict[str, NodeStatus]:
        """The reports of droplets without a confirmed failure (theirs may read healthy for
        `health.STALE_AFTER_S` more: a dead agent writes no report saying otherwise)."""
        return {name: node for name, node in self.nodes.items() if name not in self.failures}

    def hosted(self) -> dict[str, Allocation]:
        """The allocations with the survivors that run displaced instances added."""
        return hosted(self.allocations, self.failures)

    async def set_nodes(self, values: dict[str, NodeStatus]) -> None:
        self.nodes = dict(values)
        self._arrived("nodes")

    async def set_allocations(self, values: dict[str, Allocation]) -> None:
        self.allocations = dict(values)
        self._arrived("allocations")

    async def set_desired(self, values: dict[str, PublishedSpec]) -> None:
        message = values.get(subjects.DESIRED_KEY)
        try:
            self.state = DesiredState.from_data(message.spec) if message else None
        except (KeyError, TypeError, ValueError) as err:
            log.warning("Desired state unreadable; no domains. error=%s", err)
        self._arrived("desired")

    async def set_failures(self, values: dict[str, FailureRecord]) -> None:
        self.failures = dict(values)
        self._arrived("failures")

    async def set_holds(self, values: dict[str, DetectionHold]) -> None:
        self.holds = {hold.droplet: hold for hold in values.values()}
        self._arrived("holds")

    def _arrived(self, what: str) -> None:
        self._seen.add(what)
        self.changed.set()
