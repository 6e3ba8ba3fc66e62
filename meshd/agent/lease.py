"""Per-role leader election on KV `mesh_leases/<role>` (docs/architecture.md, Leases).

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
import functools
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from meshd.agent.leaseboard import LeaseBoard
from meshd.agent.store import Conflict, Store, StoreUnavailable
from meshd.core.backoff import delay
from plugins.providers import Fence, StaleFence
from protocol import subjects
from protocol.codec import decode, encode
from protocol.errors import MeshError, ProtocolError
from protocol.messages import Lease

Hesitation = float | Callable[[], float]  # seconds to wait before competing (or how to tell)
log = logging.getLogger(__name__)


class TermEnded(MeshError):
    """The term ended (lost, expired or released): whoever catches this must stop acting for
    the role."""


@dataclass(frozen=True, slots=True)
class LeaseTiming:
    # Whole seconds (NATS per-message TTLs have one-second resolution). A holder keeps its
    # role through a JetStream election (5-8 s after a nats-server dies or stalls): the
    # deadline, TTL - margin after the last renewal, outlasts it. A renewal that fails is
    # tried again every `retry_every`; one that succeeds, after `renew_every` (every renewal
    # is a replicated write, and every agent's lease board receives it).
    ttl: float = 12.0
    renew_every: float = 4.0
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

    def ensure_held(self) -> None:
        """Call right before every side effect of the role: raises `TermEnded` once the term
        is over, or its deadline passed."""
        if not self.valid:
            raise TermEnded(f"{self.role} lease (fence {self.fence}) is no longer held")


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
        hesitate: Hesitation = 0.0,
        board: LeaseBoard | None = None,
        eligible: Callable[[], bool] | None = None,
    ) -> None:
        self.store = store
        self.role = role
        self.holder = holder
        self.incarnation = incarnation
        self.lead = lead
        self.timing = timing or LeaseTiming()
        self.observer = observer
        # Wait before each attempt (now, if a function): lets a preferred holder win.
        self.hesitate = hesitate if callable(hesitate) else functools.partial(float, hesitate)
        self.board = board  # where a keeper that does not hold the lease waits for it
        # Whether this droplet may hold the role now (sensitive roles: trusted droplets only);
        # a holder that stops being eligible hands the role over.
        self.eligible = eligible or (lambda: True)
        self.term: Term | None = None
        self._key = subjects.lease_key(role)
        # The revision of this keeper's lease when its last term merely expired: if nobody
        # wrote the lease since, renewing it takes it back (the next term's fence is newer).
        self._resumable: int | None = None
        self._unsure = False  # the last create's answer was lost: it may have landed

    async def run(self) -> None:
        keeper = asyncio.current_task()
        while True:
            # A cancellation that came while a term's role wound down was taken in for the
            # role's (a keeper never uncancels): the keeper ends instead of competing again.
            if keeper is not None and keeper.cancelling():
                raise asyncio.CancelledError
            if self.board is not None and self._resumable is None and not self._unsure:
                await self.board.wait_free(self.role, self.timing.ttl)
            if wait := self.hesitate():
                await asyncio.sleep(wait)
            if not self.eligible():
                await asyncio.sleep(self.timing.retry_every)
                continue
            term = await self._acquire()
            if term is None:
                # Jittered, so that contenders who failed together do not come back together.
                await asyncio.sleep(delay(0, self.timing.retry_every, self.timing.retry_every))
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
            revision = await self._resume() or await self._create()
        except Conflict:
            return None  # another agent holds it
        except StoreUnavailable as err:
            log.debug(
                "Lease not taken: the store does not answer. role=%s error=%s", self.role, err
            )
            return None
        term = Term(self.role, revision, started + self.timing.ttl - self.timing.margin)
        self.term = term
        self._notify(term)
        log.info("Lease taken. role=%s fence=%d", self.role, revision)
        self.store.record_soon("lease_taken", self.holder, self.role, {}, fence=revision)
        return term

    async def _create(self) -> int:
        """Create the lease. A create whose answer was lost (the store stalled) may have
        landed: the lease it finds next in this keeper's name is taken back (`_reclaim`), not
        left to expire while nobody acts on it (its last holder would stop serving the entry
        for a holder that is not)."""
        unsure, self._unsure = self._unsure, False
        try:
            try:
                return await self.store.create(
                    subjects.LEASES_BUCKET, self._key, self._value(), ttl=self.timing.ttl
                )
            except Conflict:
                if not unsure or (revision := await self._reclaim()) is None:
                    raise
                return revision
        except StoreUnavailable:
            self._unsure = True
            raise

    async def _reclaim(self) -> int | None:
        """The lease renewed over the revision found, when it is in this keeper's name
        (holder and incarnation: nobody else writes that) although this keeper did not know
        that revision, its answer lost; None when it is another's or gone."""
        found = await self.store.get(subjects.LEASES_BUCKET, self._key)
        if found is None or found.value is None or not self._mine(found.value):
            return None
        return await self.store.update(
            subjects.LEASES_BUCKET,
            self._key,
            self._value(),
            last=found.revision,
            ttl=self.timing.ttl,
        )

    def _mine(self, value: bytes) -> bool:
        try:
            lease = decode(value, Lease)
        except ProtocolError:
            return False
        return (lease.holder, lease.incarnation) == (self.holder, self.incarnation)

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
        release = False
        failure: BaseException | None = None
        try:
            renewed = True
            while term.valid and not leading.done() and self.eligible():
                await asyncio.sleep(self.timing.renew_every if renewed else self.timing.retry_every)
                renewed = await self._renew(term)
        except asyncio.CancelledError:
            release = term.valid  # shutting down while holding: hand over once the role stopped
            raise
        finally:
            if term.ending is None:
                term.ending = Ending.EXPIRED if term.expired else Ending.RELEASED
            if term.ending is Ending.EXPIRED:
                self._resumable = term.revision
            # The role's work ended by itself (it failed): hand over at once.
            release = release or (term.ending is Ending.RELEASED and term.valid)
            term.ended = True
            failure = await self._stop(leading, term)
            if self.term is term:
                self.term = None
                self._notify(None)
            await self._ended(term, release)
        if failure is not None:
            raise failure

    async def _stop(self, leading: asyncio.Task[None], term: Term) -> BaseException | None:
        """Stop the role's work; a programming error it raised, to be raised again (the agent
        exits and its supervisor restarts it), or None. A term that ended, a fence found stale
        and a failure of the outside world (a provider, a notifier) end only the term."""
        leading.cancel()
        try:
            await leading
        except asyncio.CancelledError:
            return None
        except Exception as err:  # sorted below: only a bug is raised again
            group = err if isinstance(err, ExceptionGroup) else ExceptionGroup("role", [err])
            bugs = group.subgroup(_is_bug)
            if bugs is not None:
                log.error("Role failed on a bug. role=%s fence=%d", self.role, term.fence)
                return bugs
            failures = _leaves(group.subgroup(_is_failure))
            if failures:
                log.error(
                    "Role failed; competing again. role=%s fence=%d error=%s",
                    self.role,
                    term.fence,
                    "; ".join(str(e) for e in failures),
                )
        return None

    async def _ended(self, term: Term, release: bool) -> None:
        """Say how the term ended, once: `lease_lost` only for a lost one."""
        log.info("Lease ended. role=%s fence=%d ending=%s", self.role, term.fence, term.ending)
        if release:
            await self._release(term)
        elif term.ending is Ending.LOST:
            self.store.record_soon("lease_lost", self.holder, self.role, {}, fence=term.fence)
        elif term.ending is Ending.EXPIRED:
            self.store.record_soon("lease_expired", self.holder, self.role, {}, fence=term.fence)

    async def _renew(self, term: Term) -> bool:
        """Whether the lease was renewed (the term's deadline moved)."""
        started = time.monotonic()
        if started >= term.deadline:
            return False
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
            reclaimed = await self._reclaim_in_time(term)
            if reclaimed is None:
                term.ending = Ending.LOST
                term.ended = True
                return False
            term.revision = reclaimed  # an earlier renewal had landed, its answer lost
        except (StoreUnavailable, TimeoutError):
            return False  # tried again soon, until the deadline passes
        term.deadline = started + self.timing.ttl - self.timing.margin
        return True

    async def _reclaim_in_time(self, term: Term) -> int | None:
        try:
            return await asyncio.wait_for(
                self._reclaim(), timeout=max(0.1, term.deadline - time.monotonic())
            )
        except (Conflict, StoreUnavailable, TimeoutError):
            return None

    async def _release(self, term: Term) -> None:
        """Hand the role over at once instead of after the TTL (the agent stops, or the role's
        work ended); recorded as `lease_released`."""
        with contextlib.suppress(Conflict, StoreUnavailable):
            await self.store.delete(subjects.LEASES_BUCKET, self._key, last=term.revision)
            log.info("Lease released. role=%s fence=%d", self.role, term.fence)
            await self.store.record("lease_released", self.holder, self.role, {}, term.fence)

    def _notify(self, term: Term | None) -> None:
        if self.observer is not None:
            self.observer(self.role, term)


def _is_bug(err: BaseException) -> bool:
    """Not the end of a term, nor a failure of the outside world: a programming error."""
    if isinstance(err, BaseExceptionGroup):
        return False  # look inside
    return not isinstance(err, MeshError | asyncio.CancelledError)


def _is_failure(err: BaseException) -> bool:
    """A failure of the outside world (a provider, a notifier), not the term's end."""
    if isinstance(err, BaseExceptionGroup):
        return False
    return isinstance(err, MeshError) and not isinstance(err, TermEnded | StaleFence)


def _leaves(group: BaseExceptionGroup[Exception] | None) -> list[BaseException]:
    if group is None:
        return []
    found: list[BaseException] = []
    for err in group.exceptions:
        found.extend(_leaves(err) if isinstance(err, BaseExceptionGroup) else [err])
    return found
