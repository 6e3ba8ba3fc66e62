"""Every lease as this agent last saw it change, through one watch of `mesh_leases`: lease
keepers that do not hold their role wait here until it looks free, instead of asking the
store to create the lease again and again (each failed create is two JetStream requests; ten
a second from every droplet kept the servers busy).

A lease looks free when it is absent (never taken, released, or its expiry seen) or when it
has not changed for its TTL: the holder renews well within the TTL, and without a limit
marker a watch does not see a TTL expire. The keeper then tries to take it; the store decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from meshd.agent.backoff import retries
from meshd.agent.store import Store, StoreUnavailable
from protocol import subjects

log = logging.getLogger(__name__)
RETRY_S = 0.5
RETRY_MAX_S = 5.0


class LeaseBoard:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._present: set[str] = set()
        self._changed_at: dict[str, float] = {}  # key -> when it last changed (monotonic)
        self._ready = False  # the current leases have been read since the watch (re)started
        self._freed = asyncio.Event()  # set when a lease goes (or the board stops knowing)

    async def run(self) -> None:
        async for _ in retries(RETRY_S, RETRY_MAX_S):
            try:
                async for entry in self.store.watch(subjects.LEASES_BUCKET):
                    if entry is None:
                        self._ready = True
                    elif entry.value is None:
                        self._present.discard(entry.key)
                        self._changed_at[entry.key] = time.monotonic()
                        self._freed.set()
                    else:  # a renewal or a new holder: waiters find out when their timer ends
                        self._present.add(entry.key)
                        self._changed_at[entry.key] = time.monotonic()
            except StoreUnavailable as err:
                log.info("Lease watch broken; watching again. error=%s", err)
            self._ready = False
            self._freed.set()

    async def wait_free(self, role: str, ttl: float) -> None:
        """Return once the role's lease looks free, or when this board cannot tell (its watch
        is broken: then the keeper tries, and the store answers)."""
        key = subjects.lease_key(role)
        while self._ready:
            if key not in self._present:
                return
            left = self._changed_at.get(key, 0.0) + ttl - time.monotonic()
            if left <= 0:
                return
            self._freed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._freed.wait()
