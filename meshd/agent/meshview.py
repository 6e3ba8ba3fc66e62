"""What an agent knows of the whole mesh, kept current by its watches: every droplet's card
(address, incarnation, size), the reports and the allocations it reads (all of them on a
droplet that holds or may hold a role, else its rollout peers' reports and the allocations
that concern it: `feeds.ReportFeed`, `allocation_feed`), the desired state, the confirmed
failures and the operator's detection holds. The reconciler, the load balancer
and the failure detector read it; nothing here reads the store, so a new lb holder can render
at once, even while JetStream elects."""

from __future__ import annotations

import asyncio
import logging

from meshd.core.displacement import hosted
from meshd.core.notify_settings import NotifySettings
from meshd.core.spec import DesiredState
from protocol import subjects
from protocol.cards import NodeCard
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
        self.cards: dict[str, NodeCard] = {}  # every droplet's
        self.nodes: dict[str, NodeStatus] = {}  # the reports read (see the module's docstring)
        self.allocations: dict[str, Allocation] = {}  # those it reads (see above)
        self.allocations_whole = asyncio.Event()  # set while they are every allocation
        self.state: DesiredState | None = None
        self.failures: dict[str, FailureRecord] = {}
        self.holds: dict[str, DetectionHold] = {}  # by droplet
        self.changed = asyncio.Event()
        self._seen: set[str] = set()

    @property
    def ready(self) -> bool:
        """Cards, the reports it reads and allocations have all been read."""
        return {"cards", "nodes", "allocations"} <= self._seen

    @property
    def knows_allocations(self) -> bool:
        """Every allocation it reads has arrived (all of them, or those of its droplet)."""
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

    async def set_cards(self, values: dict[str, NodeCard]) -> None:
        self.cards = dict(values)
        self._arrived("cards")

    async def set_nodes(self, values: dict[str, NodeStatus], complete: bool = True) -> None:
        """`complete` False: some of the reports it reads have not arrived yet (a watch
        just started), and the view is not `ready` until they have."""
        self.nodes = dict(values)
        if complete:
            self._arrived("nodes")
        else:
            self._seen.discard("nodes")
            self.changed.set()

    async def set_allocations(
        self, values: dict[str, Allocation], complete: bool = True, whole: bool = True
    ) -> None:
        """`complete` False: some it reads have not arrived yet; `whole` False: it reads only
        those that concern its droplet (or is not `complete`)."""
        self.allocations = dict(values)
        if whole and complete:
            self.allocations_whole.set()
        else:
            self.allocations_whole.clear()
        if complete:
            self._arrived("allocations")
        else:
            self._seen.discard("allocations")
            self.changed.set()

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
