"""Failure detection by consensus of monitors: the I/O half (subscriptions, probes, votes on
core NATS, the failure record). What each monitor does when is `watch` (pure timing); how
votes add up is `ballot`.

Every agent watches the droplets the monitor map gives it (`meshd.core.monitors`). Evidence
of life is a liveness beat on `mesh.hb.<target>` or a good HTTP probe of the target's agent
(`/health`). A silent target is suspected on `mesh.suspect.<target>`; its other monitors then
probe it closely, and through a helper (`mesh.probe.<helper>`, request/reply). A monitor
confirms after a longer silence when the indirect probe failed too; a good probe later takes
the vote back. A live target that hears it is suspected refutes, which voids every vote about
it. Votes reach the target's monitors and the target alone (each subscribes to those about
its targets and itself). When a majority of the target's monitors confirm, whichever monitor
sees it first records the failure once (KV create on `mesh_failures/<target>`); the vote
itself runs over core NATS, so it does not wait for a JetStream election. A target with one
monitor (two droplets) is confirmed only when the provider says it is not running either; a
target the operator holds (`meshctl hold`) is suspected but never confirmed until the hold
ends.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Coroutine

import aiohttp

from meshd.agent import metrics
from meshd.agent.backoff import retries
from meshd.agent.beats import BeatListener
from meshd.agent.config import AGENT_HTTP_PORT, DropletIdentity
from meshd.agent.meshview import MeshView
from meshd.agent.store import Conflict, Received, Store, StoreUnavailable
from meshd.agent.subject_set import SubjectSet
from meshd.core.monitors import monitor_map, monitored, targets_of
from meshd.watchers.detector.ballot import Ballot, Decision
from meshd.watchers.detector.watch import TICK_S, Step, Watch, starved, steps
from plugins.providers import DropletStatus, Provider
from protocol import subjects
from protocol.codec import decode, encode
from protocol.errors import MeshError, ProtocolError
from protocol.messages import FailureRecord, FailureState, LivenessBeat, Suspicion, Verdict

log = logging.getLogger(__name__)
PROBE_TIMEOUT_S = 0.5
INDIRECT_TIMEOUT_S = 1.0
HELPERS = 2  # droplets asked to probe a suspected target for a monitor
RECORD_RETRY_S = 0.25  # the failure record waits out an election with backoff up to 1 s
RECORD_RETRY_MAX_S = 1.0


class Detector:
    def __init__(
        self,
        store: Store,
        identity: DropletIdentity,
        incarnation: int,
        view: MeshView,
        provider: Provider,
        provider_tag: str,
        beats: BeatListener,
    ) -> None:
        self.store = store
        self.me = identity.name
        self.incarnation = incarnation
        self.view = view
        self.provider = provider
        self.provider_tag = provider_tag
        self.watches: dict[str, Watch] = {}
        self.ballot = Ballot()
        self.starved = False
        self.probes = 0  # HTTP probes sent, direct and for others (the bench counts them)
        self._last_refute = 0.0
        self._held_silent: set[str] = set()  # held targets whose silence was logged
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: aiohttp.ClientSession | None = None
        self._map: tuple[object, object, dict[str, tuple[str, ...]]] | None = None
        self.beats = beats
        beats.listen(self._on_beat)
        # The votes about itself and its targets only: a failure costs a few messages to its
        # monitors and itself, not one to every agent.
        self.votes = SubjectSet(store, subjects.suspect, self._on_vote, "Votes")
        self.votes.want({self.me})

    def monitors(self) -> dict[str, tuple[str, ...]]:
        """The monitor map over the droplets that booted and have no confirmed failure;
        computed again only when the view's reports or failures were replaced."""
        cards, failures = self.view.cards, self.view.failures
        if self._map is None or self._map[0] is not cards or self._map[1] is not failures:
            lives = {name: card.incarnation for name, card in cards.items()}
            self._map = (cards, failures, monitor_map(monitored(lives, failures)))
        return self._map[2]

    def _refresh(self, monitors: dict[str, tuple[str, ...]]) -> None:
        mine = set(targets_of(self.me, monitors))
        self.beats.want("detector", mine)
        self.votes.want({self.me, *mine})
        for gone in set(self.watches) - mine:
            del self.watches[gone]
        for target in mine:
            card = self.view.cards[target]
            watch = self.watches.get(target)
            if watch is None or card.incarnation > watch.incarnation:
                self.watches[target] = Watch(card.address, card.incarnation)
            else:
                watch.address = card.address
        self.ballot.forget(set(self.view.cards))

    # --- loop --------------------------------------------------------------------------------

    async def run(self) -> None:
        async with aiohttp.ClientSession() as http:
            self._http = http
            probes = await self.store.subscribe(subjects.probe(self.me), self._on_probe_request)
            self._spawn(self.votes.run())
            try:
                while True:
                    self._tick(http)
                    await asyncio.sleep(TICK_S)
            finally:
                await probes.unsubscribe()
                for task in self._tasks:
                    task.cancel()

    def _tick(self, http: aiohttp.ClientSession) -> None:
        monitors = self.monitors()
        self._refresh(monitors)
        now = time.monotonic()
        hearing_none = starved(list(self.watches.values()), now)
        if hearing_none != self.starved:
            self.starved = hearing_none
            if hearing_none:
                log.warning("Hearing none of my targets; suspecting nobody.")
        may_judge = not self.starved and self.store.connected
        for target, watch in self.watches.items():
            for step in steps(watch, now, may_judge=may_judge):
                if step is Step.PROBE:
                    watch.probing = True
                    self._spawn(self._probe(http, target, watch))
                elif step is Step.SUSPECT:
                    log.warning("Droplet suspected. droplet=%s", target)
                    metrics.SUSPICIONS.inc()
                    self.store.record_soon("droplet_suspected", self.me, target, {})
                    self._vote(target, watch.incarnation, Verdict.SUSPECT)
                    self._spawn(self._indirect(target, watch))
                elif step is Step.CONFIRM:
                    self._spawn(self._confirm(target, watch, len(monitors.get(target, ()))))
                else:
                    self._vote(target, watch.incarnation, Verdict.CONFIRM)

    def _spawn(self, coroutine: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- evidence ----------------------------------------------------------------------------

    async def _probe(self, http: aiohttp.ClientSession, target: str, watch: Watch) -> None:
        try:
            ok = await self._ask(http, watch.address)
        finally:
            watch.probing = False
        if ok and self.watches.get(target) is watch:
            self._alive(target, watch)

    async def _ask(self, http: aiohttp.ClientSession, address: str) -> bool:
        self.probes += 1
        return await probe(http, address)

    def _alive(self, target: str, watch: Watch) -> None:
        self._held_silent.discard(target)
        voted = watch.voted is not None
        if watch.alive(time.monotonic()):
            log.info("Suspected droplet answers again. droplet=%s", target)
            if voted:
                self._vote(target, watch.incarnation, Verdict.REFUTE)

    def _on_beat(self, beat: LivenessBeat) -> None:
        watch = self.watches.get(beat.droplet)
        if watch is not None and beat.incarnation >= watch.incarnation:
            self._alive(beat.droplet, watch)

    async def _on_probe_request(self, msg: Received) -> None:
        """A monitor asks this agent to probe a target for it (indirect probe)."""
        target = msg.data.decode(errors="replace")
        card = self.view.cards.get(target)
        http = self._http
        ok = card is not None and http is not None and await self._ask(http, card.address)
        await msg.respond(b"ok" if ok else b"fail")

    async def _indirect(self, target: str, watch: Watch) -> None:
        others = [
            name
            for name, card in self.view.cards.items()
            if name not in (self.me, target) and card.incarnation > 0
        ]
        # Chosen at random, as SWIM does: the same two would answer every suspicion in the mesh.
        helpers = random.sample(others, min(HELPERS, len(others)))
        answers = await asyncio.gather(
            *(
                self.store.request(subjects.probe(h), target.encode(), INDIRECT_TIMEOUT_S)
                for h in helpers
            )
        )
        watch.indirect_failed = not any(answer == b"ok" for answer in answers)

    # --- votes -------------------------------------------------------------------------------

    async def _confirm(self, target: str, watch: Watch, monitor_count: int) -> None:
        if self.view.held(target, time.time()):
            if target not in self._held_silent:
                self._held_silent.add(target)
                log.warning("Droplet silent but held; not confirming. droplet=%s", target)
            # Asked again each tick, without probing anew: confirmed once the hold ends.
            watch.voted = Verdict.SUSPECT
            return
        if monitor_count == 1 and not await self._provider_agrees(target):
            watch.voted = Verdict.SUSPECT  # alive for the provider: ask again
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
            watch = self.watches.get(vote.target)
            if watch is not None:
                self._alive(vote.target, watch)
        decision = self.ballot.count(vote, self.monitors().get(vote.target, ()))
        if decision is not None:
            self._decided(decision)

    def _decided(self, decision: Decision) -> None:
        if self.view.held(decision.target, time.time()):
            return  # its monitors saw the hold late: no record while it holds
        by = ",".join(decision.confirmed_by)
        log.warning("Droplet failure confirmed. droplet=%s by=%s", decision.target, by)
        metrics.CONFIRMATIONS.inc()
        record = FailureRecord(
            droplet=decision.target,
            confirmed_by=decision.confirmed_by,
            confirmed_at=time.time(),
            state=FailureState.CONFIRMED,
            fence=0,
            incarnation=decision.incarnation,
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
