"""Lease-guarded leaders: exactly one agent at a time does each role's work.

A leader is anything with a `role` (its lease's name, `protocol.subjects.Role`) and
`async lead(term)`, which does the role's work for as long as the term lasts: it calls
`term.ensure_held()` right before every side effect, carries `term.fence` on each, and returns
or raises `TermEnded` when the term ends. The agent (`meshd.agent.app`) runs one lease keeper
per role; several leaders that share one lease run together (`Together`). No leader imports
another: what two of them read is in `meshd.agent.records`.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from meshd.agent.lease import Term
from protocol.subjects import Role


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
