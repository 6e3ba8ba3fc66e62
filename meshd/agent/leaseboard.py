"""Every lease this agent may hold as it last saw it change, through watches of `mesh_leases`:
lease keepers that do not hold their role wait here until it looks free, instead of asking the
store to create the lease again and again (each failed create is two JetStream requests; ten
a second from every droplet kept the servers busy).

A lease looks free when it is absent (never taken, released, or its expiry seen) or when it
has not changed for its TTL: the holder renews well within the TTL, and without a limit
marker a watch does not see a TTL expire. The keeper then tries to take it; the store decides.

Only the leases of roles this droplet may hold now are watched (`wanted`): every renewal is
delivered to every watcher, and a droplet that only runs projects may hold two roles of
eleven, whose leases are renewed eight times less often than the entry point's
(docs/scale.md). A keeper of a role not watched is told at once that the board cannot tell.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection

from meshd.agent.backoff import retries
from meshd.agent.loops import ALL, ScopedWatches
from meshd.agent.store import Store, StoreUnavailable
from protocol import subjects

log = logging.getLogger(__name__)
RETRY_S = 0.5
RETRY_MAX_S = 5.0


class LeaseBoard:
    def __init__(self, store: Store, wanted: Callable[[], Collection[str]] | None = None) -> None:
        """`wanted`: the roles whose leases to watch now (None: all, in one watch)."""
        self.store = store
        self.wanted = wanted
        self._present: set[str] = set()
        self._changed_at: dict[str, float] = {}  # key -> when it last changed (monotonic)
        self._ready: set[str] = set()  # watches whose current leases are read since (re)start
        self._freed = asyncio.Event()  # set when a lease goes (or the board stops knowing)
        self._watches = ScopedWatches(self.scope, self._watch, self._followed)
        self.rescope = self._watches.rescope  # eligibility follows trust

    def scope(self) -> frozenset[str]:
        roles = None if self.wanted is None else set(self.wanted())
        if roles is None or roles >= set(subjects.Role):
            return frozenset({ALL})
        return frozenset(subjects.lease_key(role) for role in roles)

    async def run(self) -> None:
        await self._watches.run()

    async def _followed(self, stopped: set[str]) -> None:
        self._ready -= stopped
        self._freed.set()  # waiters look again at what is watched

    async def _watch(self, keys: str) -> None:
        async for _ in retries(RETRY_S, RETRY_MAX_S):
            self._present -= {k for k in self._present if keys in (ALL, k)}
            try:
                async for entry in self.store.watch(subjects.LEASES_BUCKET, keys):
                    if entry is None:
                        self._ready.add(keys)
                    elif entry.value is None:
                        self._present.discard(entry.key)
                        self._changed_at[entry.key] = time.monotonic()
                        self._freed.set()
                    else:  # a renewal or a new holder: waiters find out when their timer ends
                        self._present.add(entry.key)
                        self._changed_at[entry.key] = time.monotonic()
            except StoreUnavailable as err:
                log.info("Lease watch broken; watching again. error=%s", err)
            finally:
                self._ready.discard(keys)
                self._freed.set()

    def _knows(self, key: str) -> bool:
        return ALL in self._ready or key in self._ready

    async def wait_free(self, role: str, ttl: float) -> None:
        """Return once the role's lease looks free, or when this board cannot tell (its watch
        is broken or it does not watch the role: then the keeper tries, and the store
        answers)."""
        key = subjects.lease_key(role)
        while self._knows(key):
            if key not in self._present:
                return
            left = self._changed_at.get(key, 0.0) + ttl - time.monotonic()
            if left <= 0:
                return
            self._freed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._freed.wait()
