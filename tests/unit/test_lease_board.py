"""The lease board watches only the leases of the roles its droplet may hold now: a keeper of
another role is told at once that the board cannot tell (it is not eligible anyway), and when
the droplet may hold more roles the board watches their leases too."""

from __future__ import annotations

import asyncio

from meshd.agent.leaseboard import LeaseBoard
from protocol import subjects
from protocol.subjects import Role
from tests.support.memstore import MemoryStore
from tests.support.waiting import until

TTL = 30.0  # far longer than the test: a held lease never looks free by its age


async def take(store: MemoryStore, role: Role) -> None:
    await store.create(subjects.LEASES_BUCKET, subjects.lease_key(role), b"held")


async def waits(board: LeaseBoard, role: Role) -> bool:
    """Whether `wait_free` for `role` is still waiting after a moment."""
    waiting = asyncio.create_task(board.wait_free(role, TTL))
    await asyncio.sleep(0.05)
    still = not waiting.done()
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    return still


async def test_only_the_leases_of_roles_the_droplet_may_hold_are_watched() -> None:
    store, roles = MemoryStore(), [Role.SCHEDULER]
    watched: list[str] = []
    watch = store.watch

    def counted(bucket: str, keys: str = ">"):  # type: ignore[no-untyped-def]
        watched.append(keys)
        return watch(bucket, keys)

    store.watch = counted  # type: ignore[method-assign]
    for role in (Role.SCHEDULER, Role.LB):
        await take(store, role)
    board = LeaseBoard(store, lambda: roles)
    running = asyncio.create_task(board.run())
    try:
        await until(lambda: watched, "a watch")
        assert watched == [subjects.lease_key(Role.SCHEDULER)]
        assert await waits(board, Role.SCHEDULER)  # held: its keeper waits
        assert not await waits(board, Role.LB)  # not watched: "cannot tell" at once

        roles.append(Role.LB)  # trusted now (a JetStream server)
        board.rescope.set()
        await until(lambda: len(watched) == 2, "the lb lease watched too")
        await until(lambda: waits(board, Role.LB), "the keeper of lb waiting while it is held")
        await store.delete(subjects.LEASES_BUCKET, subjects.lease_key(Role.LB))
        assert not await waits(board, Role.LB)  # released: free

        roles[:] = list(Role)  # may hold every role: one watch of them all
        board.rescope.set()
        await until(lambda: watched[-1] == ">", "one watch of every lease")
        assert await waits(board, Role.SCHEDULER)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
