"""Per-role leader election on KV `mesh_leases/<role>` (DESIGN.md, Leases).

A lease is taken with create-if-absent and a server-side per-key TTL, renewed by
compare-and-set carrying the TTL again. The revision at which it was taken is the term's
fencing token. The holder keeps its own deadline on the monotonic clock (last successful
renewal + TTL - margin) and stops acting when it passes, so it always stops before the server
lets another agent take the lease. A renewal refused for a wrong revision means the lease is
lost at once; a renewal that times out is retried until the deadline. A term that ended only
because its deadline passed (a JetStream election outlasted it) is resumed by renewing the
same lease when nobody wrote it since: its holder need not wait for the TTL to run out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from meshd.agent.store import Conflict, Store, StoreUnavailable
from plugins.providers import Fence
from protocol import subjects
from protocol.codec import encode
from protocol.errors import MeshError
from protocol.messages import Lease

log = logging.getLogger(__name__)


class LeaseLost(MeshError):
    """The term ended: whoever catches this must stop acting for the role."""


@dataclass(frozen=True, slots=True)
class LeaseTiming:
    # Whole seconds (NATS per-message TTLs have one-second resolution). A holder keeps its
    # role through a JetStream election (5-8 s after a nats-server dies or stalls): the
    # deadline, TTL - margin after the last renewal, outlasts it.
    ttl: float = 12.0
    renew_every: float = 2.0
    margin: float = 2.0
    retry_every: float = 1.0


class Ending(StrEnum):
    """Why a term ended."""

    LOST = "lost"  # a renewal was refused: another holder may act already
    EXPIRED = "expired"  # no renewal got through before the deadline (store unavailable)
    RELEASED = "released"  # the agent stops or the role's work ended


class Term:
    """One holder's tenure of a role. `fence` is the revision at which it was taken."""

    def __init__(self, role: str, fence: int, deadline: float) -> None:
        self.role = role
        self.fence = fence
        self.revision = fence
        self.deadline = deadline
        self.ended = False
        self.ending: Ending | None = None  # set when the term ends, before the role is stopped

    @property
    def valid(self) -> bool:
        return not self.ended and time.monotonic() < self.deadline

    @property
    def expired(self) -> bool:
        """Ended (or ending) only because no renewal got through in time."""
        if self.ending is not None:
            return self.ending is Ending.EXPIRED
        return not self.ended and time.monotonic() >= self.deadline

    @property
    def token(self) -> Fence:
        """The fence that the role's provider calls carry."""
        return Fence(self.role, self.fence)

    def check(self) -> None:
        """Call right before every side effect of the role."""
        if not self.valid:
            raise LeaseLost(f"{self.role} lease (fence {self.fence}) is no longer held")


Leader = Callable[[Term], Coroutine[Any, Any, None]]
Observer = Callable[[str, Term | None], None]


class LeaseKeeper:
    """Competes for one role and runs `lead(term)` while it holds it."""

    def __init__(
        self,
        store: Store,
        role: str,
        holder: str,
        incarnation: int,
        lead: Leader,
        *,
        timing: LeaseTiming | None = None,
        observer: Observer | None = None,
        hesitate: float = 0.0,
    ) -> None:
        self.store = store
        self.role = role
        self.holder = holder
        self.incarnation = incarnation
        self.lead = lead
        self.timing = timing or LeaseTiming()
        self.observer = observer
        self.hesitate = hesitate  # wait before each attempt: lets a preferred holder win
        self.term: Term | None = None
        self._key = subjects.lease_key(role)
        # The revision of this keeper's lease when its last term merely expired: if nobody
        # wrote the lease since, renewing it takes it back (the next term's fence is newer).
        self._resumable: int | None = None

    async def run(self) -> None:
        while True:
            if self.hesitate:
                await asyncio.sleep(self.hesitate)
            try:
                term = await self._acquire()
            except Exception as err:  # whatever NATS answered, the keeper must keep trying
                log.warning("Lease attempt failed. role=%s error=%r", self.role, err)
                term = None
            if term is None:
                await asyncio.sleep(self.timing.retry_every)
                continue
            await self._hold(term)

    def _value(self) -> bytes:
        return encode(
            Lease(
                role=self.role,
                holder=self.holder,
                incarnation=self.incarnation,
                acquired_at=time.time(),
            )
        )

    async def _acquire(self) -> Term | None:
        started = time.monotonic()
        try:
            revision = await self._resume() or await self.store.create(
                subjects.LEASES_BUCKET, self._key, self._value(), ttl=self.timing.ttl
            )
        except (Conflict, StoreUnavailable):
            return None
        term = Term(self.role, revision, started + self.timing.ttl - self.timing.margin)
        self.term = term
        self._notify(term)
        log.info("Lease taken. role=%s fence=%d", self.role, revision)
        self.store.record_soon("lease_taken", self.holder, self.role, {}, fence=revision)
        return term

    async def _resume(self) -> int | None:
        """Renew the lease of an expired term if it is still this keeper's, unwritten since
        (a JetStream election outlasted the deadline, nobody took over); its new revision."""
        last, self._resumable = self._resumable, None
        if last is None:
            return None
        try:
            return await self.store.update(
                subjects.LEASES_BUCKET, self._key, self._value(), last=last, ttl=self.timing.ttl
            )
        except Conflict:
            return None  # written since: taken, released or expired; compete anew
        except StoreUnavailable:
            self._resumable = last  # the store is still away: try again next time
            raise

    async def _hold(self, term: Term) -> None:
        leading = asyncio.create_task(self.lead(term), name=f"lead-{self.role}")
        hand_over = False
        try:
            while term.valid and not leading.done():
                await asyncio.sleep(self.timing.renew_every)
                await self._renew(term)
        except asyncio.CancelledError:
            hand_over = term.valid  # shutting down while holding: release once the role stopped
            raise
        finally:
            if term.ending is None:
                term.ending = Ending.EXPIRED if term.expired else Ending.RELEASED
            if term.ending is Ending.EXPIRED:
                self._resumable = term.revision
            term.ended = True
            leading.cancel()
            try:
                await leading
            except (asyncio.CancelledError, LeaseLost):
                pass
            except Exception:
                log.exception("Role failed. role=%s fence=%d", self.role, term.fence)
            if self.term is term:
                self.term = None
                self._notify(None)
            if hand_over:
                await self._release(term)
        log.info("Lease ended. role=%s fence=%d", self.role, term.fence)
        self.store.record_soon("lease_lost", self.holder, self.role, {}, fence=term.fence)

    async def _renew(self, term: Term) -> None:
        started = time.monotonic()
        if started >= term.deadline:
            return
        try:
            term.revision = await asyncio.wait_for(
                self.store.update(
                    subjects.LEASES_BUCKET,
                    self._key,
                    self._value(),
                    last=term.revision,
                    ttl=self.timing.ttl,
                ),
                timeout=max(0.1, term.deadline - started),
            )
        except Conflict:
            term.ending = Ending.LOST
            term.ended = True
            return
        except (StoreUnavailable, TimeoutError):
            return  # retried on the next tick until the deadline passes
        except Exception as err:  # an unexpected answer is a failed renewal, not a crash
            log.warning("Lease renewal failed. role=%s error=%r", self.role, err)
            return
        term.deadline = started + self.timing.ttl - self.timing.margin

    async def _release(self, term: Term) -> None:
        """On clean shutdown, hand the role over at once instead of after the TTL."""
        with contextlib.suppress(Conflict, StoreUnavailable):
            await self.store.delete(subjects.LEASES_BUCKET, self._key, last=term.revision)
            log.info("Lease released. role=%s fence=%d", self.role, term.fence)
            await self.store.record("lease_released", self.holder, self.role, {}, term.fence)

    def _notify(self, term: Term | None) -> None:
        if self.observer is not None:
            self.observer(self.role, term)
