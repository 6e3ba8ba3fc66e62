"""Lease-guarded leaders: exactly one agent at a time does each role's work.

A leader is anything with a `role` (its lease's name, `protocol.subjects.Role`) and
`async lead(term)`, which does the role's work for as long as the term lasts: it calls
`term.ensure_held()` right before every side effect, carries `term.fence` on each, and returns
or raises `TermEnded` when the term ends. The agent (`meshd.agent.app`) runs one lease keeper
per role (`lease_keepers`), whose lease board watches only the leases of the roles it may
hold; several leaders that share one lease run together (`Together`). A leader starts only
once the agent's view holds every allocation (a droplet without roles reads only its own:
`agent.allocation_feed`). No leader imports another: what two of them read is in
`meshd.agent.records`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from meshd.agent.lease import Hesitation, LeaseKeeper, LeaseTiming, Observer, Term
from meshd.agent.leaseboard import LeaseBoard
from meshd.agent.store import Store
from meshd.agent.trust import Trust
from protocol.subjects import Role

log = logging.getLogger(__name__)


class Leader(Protocol):
    """Does one role's work while its term lasts."""

    @property
    def role(self) -> Role: ...

    async def lead(self, term: Term) -> None: ...


class Together:
    """Several leaders under one lease (the heartbeat mails and their courier): they start
    together, and when one fails, the others are stopped."""

    def __init__(self, role: Role, *leaders: Leader) -> None:
        self.role = role
        self.leaders = leaders

    async def lead(self, term: Term) -> None:
        async with asyncio.TaskGroup() as tasks:
            for leader in self.leaders:
                tasks.create_task(
                    leader.lead(term), name=f"lead-{self.role}-{type(leader).__name__}"
                )


Roles = list[tuple[Leader, LeaseTiming | None, Hesitation]]  # the role, its timing, hesitation


def lease_keepers(
    store: Store, holder: str, incarnation: int, roles: Roles, trust: Trust, observer: Observer
) -> tuple[LeaseBoard, list[LeaseKeeper]]:
    """A keeper per role, and the board they wait on, which watches the leases of the roles
    this droplet may hold at the time (eligibility follows trust: `board.rescope`)."""
    checks = {leader.role: trust.eligibility(leader.role) for leader, _, _ in roles}
    board = LeaseBoard(
        store, lambda: [role for role, may in checks.items() if may is None or may()]
    )
    keepers = [
        LeaseKeeper(store, leader.role, holder, incarnation, once_whole(leader.lead, trust),
                    observer=observer,
                    timing=timing, hesitate=hesitation, board=board, eligible=checks[leader.role])
        for leader, timing, hesitation in roles
    ]  # fmt: skip
    return board, keepers


def once_whole(
    lead: Callable[[Term], Coroutine[Any, Any, None]], trust: Trust
) -> Callable[[Term], Coroutine[Any, Any, None]]:
    """`lead`, once the view holds every allocation: taking the role widened what the agent
    reads, and a leader must not act on the part it read before (the builder would delete
    the artifacts that no allocation it knows names)."""
    whole = trust.view.allocations_whole

    async def lead_once_whole(term: Term) -> None:
        if not whole.is_set():
            log.info("Role waits until every allocation is read. role=%s", term.role)
            await whole.wait()
        await lead(term)

    return lead_once_whole
