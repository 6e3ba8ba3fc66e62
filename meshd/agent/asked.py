"""Requests an agent answers on subjects of its own, each in a task of its own (a delivery must
not wait for a backup or a command to end): subscribed until cancelled, then the tasks still
running are cancelled and awaited."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from meshd.agent.store import Received, Store


class Asked:
    """The tasks started for requests, and the subscriptions that start them."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.tasks: set[asyncio.Task[None]] = set()

    def start(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def serve(self, handlers: dict[str, Callable[[Received], Awaitable[None]]]) -> None:
        """Subscribe each handler to its subject until cancelled."""
        subscriptions = [await self.store.subscribe(s, h) for s, h in handlers.items()]
        try:
            await asyncio.Event().wait()
        finally:
            for subscription in subscriptions:
                await subscription.unsubscribe()
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
