"""A family of core NATS subjects subscribed to one per name wanted (`mesh.hb.<droplet>`,
`mesh.suspect.<droplet>`), kept to what is wanted now: what an agent receives from such a
family grows with what it watches, not with the mesh."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection

from meshd.agent.store import Received, Store, StoreUnavailable, Subscription

log = logging.getLogger(__name__)


class SubjectSet:
    def __init__(
        self,
        store: Store,
        subject_of: Callable[[str], str],
        handler: Callable[[Received], Awaitable[None]],
        what: str,
    ) -> None:
        self.store = store
        self.subject_of = subject_of
        self.handler = handler
        self.what = what  # for the log: "Beats not subscribed yet."
        self._wanted: frozenset[str] = frozenset()
        self._subscriptions: dict[str, Subscription] = {}  # name -> its subscription
        self._changed = asyncio.Event()

    def want(self, names: Collection[str]) -> None:
        """Subscribed to the subjects of `names` from now on, and to no other."""
        wanted = frozenset(names)
        if wanted != self._wanted:
            self._wanted = wanted
            self._changed.set()

    async def run(self) -> None:
        try:
            while True:
                self._changed.clear()
                try:
                    await self._subscribe()
                except StoreUnavailable as err:
                    log.info("%s not subscribed yet. error=%s", self.what, err)
                    await asyncio.sleep(1.0)
                    continue
                await self._changed.wait()
        finally:
            for subscription in self._subscriptions.values():
                await subscription.unsubscribe()

    async def _subscribe(self) -> None:
        wanted = self._wanted
        for name in set(self._subscriptions) - wanted:
            await self._subscriptions.pop(name).unsubscribe()
        for name in sorted(wanted - set(self._subscriptions)):
            subscription = await self.store.subscribe(self.subject_of(name), self.handler)
            self._subscriptions[name] = subscription
