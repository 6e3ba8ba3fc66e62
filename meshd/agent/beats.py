"""The liveness beats this agent needs, received once (one subscription per droplet heard,
however many watchers use them): when each was last heard, and the beats handed to whoever
listens (the failure detector).

An agent hears only the droplets someone here asks for: the detector asks for its targets
(at most three, whatever the size of the mesh), the quorum watch for every droplet only while
JetStream does not answer. So a droplet's work on beats does not grow with the mesh.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection

from meshd.agent.store import Received, Store, StoreUnavailable, Subscription
from protocol import subjects
from protocol.codec import decode
from protocol.errors import ProtocolError
from protocol.messages import LivenessBeat

log = logging.getLogger(__name__)
EVERYONE = "*"


class BeatListener:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.heard: dict[str, float] = {}  # droplet -> its last beat (monotonic)
        self._listeners: list[Callable[[LivenessBeat], None]] = []
        self._wanted: dict[str, frozenset[str]] = {}  # who asks -> droplets (EVERYONE: all)
        self._subscriptions: dict[str, Subscription] = {}  # droplet or EVERYONE -> its own
        self._changed = asyncio.Event()

    def listen(self, callback: Callable[[LivenessBeat], None]) -> None:
        self._listeners.append(callback)

    def want(self, who: str, droplets: Collection[str] | None) -> None:
        """`who` needs the beats of `droplets` (None: of every droplet) from now on."""
        wanted = frozenset({EVERYONE}) if droplets is None else frozenset(droplets)
        if self._wanted.get(who) != wanted:
            self._wanted[who] = wanted
            self._changed.set()

    async def run(self) -> None:
        try:
            while True:
                self._changed.clear()
                try:
                    await self._subscribe()
                except StoreUnavailable as err:
                    log.info("Beats not subscribed yet. error=%s", err)
                    await asyncio.sleep(1.0)
                    continue
                await self._changed.wait()
        finally:
            for subscription in self._subscriptions.values():
                await subscription.unsubscribe()

    async def _subscribe(self) -> None:
        wanted = frozenset().union(*self._wanted.values())
        if EVERYONE in wanted:
            wanted = frozenset({EVERYONE})
        for name in set(self._subscriptions) - wanted:
            await self._subscriptions.pop(name).unsubscribe()
        for name in sorted(wanted - set(self._subscriptions)):
            subject = subjects.BEATS_ALL if name == EVERYONE else subjects.beats(name)
            self._subscriptions[name] = await self.store.subscribe(subject, self._on_beat)

    async def _on_beat(self, msg: Received) -> None:
        try:
            beat = decode(msg.data, LivenessBeat)
        except ProtocolError:
            return
        self.heard[beat.droplet] = time.monotonic()
        for listener in self._listeners:
            listener(beat)
