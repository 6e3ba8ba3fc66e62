"""Failure detection by consensus of monitors (DESIGN.md, Failure detection).

Every agent watches the droplets `meshd.core.monitors` gives it. Evidence of life is a good HTTP
probe of the target's agent (`/health`, every `PROBE_EVERY_S`) or a heartbeat on
`mesh.hb.<target>` (every 0.5 s). After `SUSPECT_AFTER_S` without any, the monitor publishes
a suspicion on `mesh.suspect.<target>`; the target's other monitors then probe it every
`SUSPECT_PROBE_EVERY_S` and once through a helper (`mesh.probe.<helper>`, request/reply). A
monitor confirms after `CONFIRM_AFTER_S` of silence when the indirect probe failed too; a good
probe later takes the vote back. A live target that hears it is suspected refutes, which
clears every vote about it. When a majority of the target's monitors confirm, whoever sees it
records the failure once (KV create on `mesh_failures/<target>`); the vote itself runs over
core NATS, so it does not wait for a JetStream election.

A monitor that hears nothing from any of its targets at once suspects nobody: the problem is
more likely its own (Lifeguard's local health). A target with one monitor (two droplets) is
confirmed only when the provider says it is not running either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field

import aiohttp

from meshd.agent.backoff import retries
from meshd.agent.config import AGENT_HTTP_PORT, DropletIdentity
from meshd.agent.meshview import MeshView
from meshd.agent.store import Conflict, Received, Store, StoreUnavailable
from meshd.core.monitors import majority, monitor_map, monitored, targets_of
from plugins.providers import DropletStatus, Provider
from protocol import subjects
from protocol.codec import decode, encode
from protocol.errors import MeshError, ProtocolError
from protocol.messages import FailureRecord, FailureState, LivenessBeat, Suspicion, Verdict

log = logging.getLogger(__name__)

TICK_S = 0.25
PROBE_EVERY_S = 0.5
SUSPECT_PROBE_EVERY_S = 0.25
PROBE_TIMEOUT_S = 0.5
INDIRECT_TIMEOUT_S = 1.0
SUSPECT_AFTER_S = 1.5  # silence before a suspicion
CONFIRM_AFTER_S = 2.8  # silence before a confirmation: a 2 s pause is never confirmed
RECORD_RETRY_S = 0.25  # the failure record waits out an election with backoff up to 1 s
RECORD_RETRY_MAX_S = 1.0
REVOTE_S = 1.0  # a standing confirmation is sent again: core NATS may have lost it


@dataclass(slots=True)
class Watch:
    """What one monitor knows of one target."""

    address: str
    incarnation: int
    last_ok: float | None = None  # monotonic; None: not seen alive since this agent started
    suspected: bool = False
    voted: Verdict | None = None
    voted_at: float = 0.0  # monotonic, when the vote was last sent
    indirect_failed: bool | None = None  # None: not asked yet
    next_probe: float = 0.0
    probing: bool = False


@dataclass(slots=True)
class Votes:
    """The latest verdict of each voter about one target, for one incarnation."""

    incarnation: int
    verdicts: dict[str, Verdict] = field(default_factory=dict)


class Detector:
    def __init__(
        self,
        store: Store,
        identity: DropletIdentity,
        incarnation: int,
        view: MeshView,
        provider: Provider,
        provider_tag: str,
    ) -> None:
        self.store = store
        self.me = identity.name
        self.incarnation = incarnation
        self.view = view
        self.provider = provider
        self.provider_tag = provider_tag
        self.watches: dict[str, Watch] = {}
        self.votes: dict[str, Votes] = {}
        self.confirmed: set[tuple[str, int]] = set()  # (droplet, incarnation) seen confirmed
        self.starved = False
        self._last_refute = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: aiohttp.ClientSession | None = None

    # --- who ---------------------------------------------------------------------------------

    def monitors(self) -> dict[str, tuple[str, ...]]:
        """The monitor map over the droplets that booted and have no confirmed failure."""
        lives = {name: node.incarnation for name, node in self.view.nodes.items()}
        return monitor_map(monitored(lives, self.view.failures))

    def _refresh(self, monitors: dict[str, tuple[str, ...]]) -> None:
        mine = set(targets_of(self.me, monitors))
        for gone in set(self.watches) - mine:
            del self.watches[gone]
        for target in mine:
            node = self.view.nodes[target]
            watch = self.watches.get(target)
            if watch is None or node.incarnation > watch.incarnation:
                self.watches[target] = Watch(node.address, node.incarnation)
            else:
                watch.address = node.address

    # --- loop --------------------------------------------------------------------------------

    async def run(self) -> None:
        async with aiohttp.ClientSession() as http:
            self._http = http
            subscriptions = [
                await self.store.subscribe(subjects.BEATS_ALL, self._on_heartbeat),
                await self.store.subscribe(subjects.SUSPECTS_ALL, self._on_vote),
                await self.store.subscribe(subjects.probe(self.me), self._on_probe_request),
            ]
            try:
                while True:
                    self._tick(http)
                    await asyncio.sleep(TICK_S)
            finally:
                for subscription in subscriptions:
                    with contextlib.suppress(Exception):
                        await subscription.unsubscribe()
                for task in self._tasks:
                    task.cancel()

    def _tick(self, http: aiohttp.ClientSession) -> None:
        monitors = self.monitors()
        self._refresh(monitors)
        now = time.monotonic()
        seen = [w for w in self.watches.values() if w.last_ok is not None]
        starved = len(seen) >= 2 and all(
            now - w.last_ok >= SUSPECT_AFTER_S for w in seen if w.last_ok is not None
        )
        if starved != self.starved:
            self.starved = starved
            if starved:
                log.warning("Hearing none of my targets; suspecting nobody. targets=%d", len(seen))
        for target, watch in self.watches.items():
            every = SUSPECT_PROBE_EVERY_S if watch.suspected else PROBE_EVERY_S
            if not watch.probing and now >= watch.next_probe:
                watch.next_probe = now + every
                watch.probing = True
                self._spawn(self._probe(http, target, watch))
            if watch.last_ok is None or self.starved or not self.store.connected:
                continue
            silence = now - watch.last_ok
            if silence >= SUSPECT_AFTER_S and not watch.suspected:
                self._suspect(target, watch)
            if (
                watch.suspected
                and silence >= CONFIRM_AFTER_S
                and watch.indirect_failed is not False
                and watch.voted is not Verdict.CONFIRM
            ):
                watch.voted = Verdict.CONFIRM  # claimed now; the provider may still say no
                watch.voted_at = math.inf  # sent (and then repeated) only once it is sure
                self._spawn(self._confirm(target, watch, len(monitors.get(target, ()))))
            elif watch.voted is Verdict.CONFIRM and now - watch.voted_at >= REVOTE_S:
                # A vote published while this agent's nats-server connection moved (the dead
                # droplet may have been its server) is lost, and one lost vote of three can
                # keep a majority from ever forming.
                watch.voted_at = now
                self._vote(target, watch.incarnation, Verdict.CONFIRM)

    def _spawn(self, coroutine: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- evidence ----------------------------------------------------------------------------

    async def _probe(self, http: aiohttp.ClientSession, target: str, watch: Watch) -> None:
        try:
            ok = await probe(http, watch.address)
        finally:
            watch.probing = False
        if ok and self.watches.get(target) is watch:
            self._alive(target, watch)

    def _alive(self, target: str, watch: Watch) -> None:
        watch.last_ok = time.monotonic()
        if watch.suspected:
            log.info("Suspected droplet answers again. droplet=%s", target)
            watch.suspected = False
            watch.indirect_failed = None
            if watch.voted is not None:
                watch.voted = None
                self._vote(target, watch.incarnation, Verdict.REFUTE)

    async def _on_heartbeat(self, msg: Received) -> None:
        try:
            beat = decode(msg.data, LivenessBeat)
        except ProtocolError:
            return
        watch = self.watches.get(beat.droplet)
        if watch is not None and beat.incarnation >= watch.incarnation:
            self._alive(beat.droplet, watch)

    async def _on_probe_request(self, msg: Received) -> None:
        """A monitor asks this agent to probe a target for it (indirect probe)."""
        target = msg.data.decode(errors="replace")
        node = self.view.nodes.get(target)
        ok = node is not None and self._http is not None and await probe(self._http, node.address)
        await msg.respond(b"ok" if ok else b"fail")

    async def _indirect(self, target: str, watch: Watch) -> None:
        helpers = sorted(
            name
            for name, node in self.view.nodes.items()
            if name not in (self.me, target) and node.incarnation > 0
        )
        answers = await asyncio.gather(
            *(
                self.store.request(subjects.probe(h), target.encode(), INDIRECT_TIMEOUT_S)
                for h in helpers[:2]
            )
        )
        watch.indirect_failed = not any(answer == b"ok" for answer in answers)

    # --- votes -------------------------------------------------------------------------------

    def _suspect(self, target: str, watch: Watch) -> None:
        watch.suspected = True
        log.warning("Droplet suspected. droplet=%s", target)
        self.store.record_soon("droplet_suspected", self.me, target, {})
        self._vote(target, watch.incarnation, Verdict.SUSPECT)
        self._spawn(self._indirect(target, watch))

    async def _confirm(self, target: str, watch: Watch, monitor_count: int) -> None:
        if monitor_count == 1 and not await self._provider_agrees(target):
            watch.voted = Verdict.SUSPECT  # alive for the provider: ask again next tick
            watch.indirect_failed = None
            self._spawn(self._indirect(target, watch))
            return
        log.warning("Droplet failure confirmed by this monitor. droplet=%s", target)
        watch.voted_at = time.monotonic()
        self._vote(target, watch.incarnation, Verdict.CONFIRM)

    async def _provider_agrees(self, target: str) -> bool:
        """The second opinion where there is no majority: the provider's view of the droplet."""
        try:
            records = await self.provider.list(self.provider_tag)
        except MeshError as err:  # no answer is no second opinion
            log.warning("Provider not answering; not confirming. droplet=%s error=%s", target, err)
            return False
        found = [r for r in records if r.name == target]
        return not found or all(r.status is not DropletStatus.ACTIVE for r in found)

    def _vote(self, target: str, incarnation: int, verdict: Verdict) -> None:
        vote = Suspicion(target=target, by=self.me, incarnation=incarnation, verdict=verdict)
        self._spawn(self.store.publish(subjects.suspect(target), encode(vote)))
        self._count(vote)

    async def _on_vote(self, msg: Received) -> None:
        try:
            vote = decode(msg.data, Suspicion)
        except ProtocolError:
            return
        if vote.by == self.me:
            return  # counted when sent
        if vote.target == self.me and vote.verdict is not Verdict.REFUTE:
            self._refute()
            return
        watch = self.watches.get(vote.target)
        heard = watch is not None and watch.last_ok is not None and not watch.suspected
        if heard and watch is not None and vote.verdict is Verdict.SUSPECT:
            watch.suspected = True  # probe it closely too; its silence decides this vote
            self._spawn(self._indirect(vote.target, watch))
        self._count(vote)

    def _refute(self) -> None:
        now = time.monotonic()
        if now - self._last_refute < TICK_S:
            return
        self._last_refute = now
        log.warning("Suspected by a monitor; refuting.")
        vote = Suspicion(
            target=self.me, by=self.me, incarnation=self.incarnation, verdict=Verdict.REFUTE
        )
        self._spawn(self.store.publish(subjects.suspect(self.me), encode(vote)))
        self.store.record_soon("suspicion_refuted", self.me, self.me, {})

    def _count(self, vote: Suspicion) -> None:
        if vote.by == vote.target and vote.verdict is Verdict.REFUTE:
            self.votes.pop(vote.target, None)  # it lives: every vote about it is void
            watch = self.watches.get(vote.target)
            if watch is not None:
                self._alive(vote.target, watch)
            return
        votes = self.votes.get(vote.target)
        if votes is None or vote.incarnation > votes.incarnation:
            votes = self.votes[vote.target] = Votes(vote.incarnation)
        elif vote.incarnation < votes.incarnation:
            return
        votes.verdicts[vote.by] = vote.verdict
        self._tally(vote.target, votes)

    def _tally(self, target: str, votes: Votes) -> None:
        monitors = self.monitors().get(target, ())
        confirming = tuple(sorted(m for m in monitors if votes.verdicts.get(m) is Verdict.CONFIRM))
        if not monitors or len(confirming) < majority(len(monitors)):
            return
        if (target, votes.incarnation) in self.confirmed:
            return
        self.confirmed.add((target, votes.incarnation))
        log.warning("Droplet failure confirmed. droplet=%s by=%s", target, ",".join(confirming))
        record = FailureRecord(
            droplet=target,
            confirmed_by=confirming,
            confirmed_at=time.time(),
            state=FailureState.CONFIRMED,
            fence=0,
            incarnation=votes.incarnation,
        )
        self._spawn(self._record(record))

    async def _record(self, record: FailureRecord) -> None:
        """Create the failure record once (whoever is first), retrying through an election."""
        async for _ in retries(RECORD_RETRY_S, RECORD_RETRY_MAX_S):
            try:
                await self.store.create(
                    subjects.FAILURES_BUCKET, subjects.failure_key(record.droplet), encode(record)
                )
            except Conflict:
                return  # another monitor recorded it
            except StoreUnavailable as err:  # JetStream elects a stream leader: try again
                log.info("Failure not recorded yet. droplet=%s error=%s", record.droplet, err)
                continue
            self.store.record_soon(
                "failure_confirmed",
                self.me,
                record.droplet,
                {"confirmed_by": list(record.confirmed_by), "incarnation": record.incarnation},
                at=record.confirmed_at,
            )
            return


async def probe(http: aiohttp.ClientSession, address: str) -> bool:
    """Whether the agent at `address` answers its health endpoint in time."""
    url = f"http://{address}:{AGENT_HTTP_PORT}/health"
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)) as reply:
            return reply.status == 200
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False
