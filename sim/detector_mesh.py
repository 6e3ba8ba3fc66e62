"""The agents of the detector simulation (`sim.detector`): the event loop on a simulated clock,
the network, and in each agent the detector's real pure code (`watch.steps`, `watch.starved`,
`ballot.Ballot`, `core.monitors`) wired as `meshd/watchers/detector/__init__.py` wires it.

What the asyncio detector does over NATS or HTTP is a message here, lost with probability
`loss` (each delivery on its own) after a uniform one-way delay:

- beats: the membership's beat loop publishes on `mesh.hb.<me>` every `BEAT_EVERY_S`; they
  reach the agents watching that droplet;
- a probe (`GET /health`) is one draw: answered after a round trip, or failed at
  `PROBE_TIMEOUT_S`; a helper answers probe requests one at a time (nats-py runs a
  subscription's callbacks in turn), and its asker gives up at `INDIRECT_TIMEOUT_S`;
- votes about a droplet go to its monitors and to itself (each agent subscribes to
  `mesh.suspect.<droplet>` of its targets and of itself) and each counts them in its own
  ballot; every monitor that counts a majority creates the failure record
  (KV create: the first one wins), which then reaches every agent, which drops the droplet
  from the monitor map.

A crashed droplet does nothing again. A cut one (partition) runs, but nothing it sends or is
sent arrives. A paused one (SIGSTOP) runs nothing; what reaches it waits in its sockets and,
on resume, its overdue timers fire first, then what queued up is handled in order: asyncio
runs expired timers before the reader task has parsed the buffered bytes, so a resumed monitor
judges with stale knowledge first (the starved rule keeps it from suspecting its targets).
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from functools import partial

from meshd.agent.membership import BEAT_EVERY_S
from meshd.core.monitors import monitor_map, monitored, targets_of
from meshd.core.spec import MASTER
from meshd.watchers.detector import HELPERS, INDIRECT_TIMEOUT_S, PROBE_TIMEOUT_S
from meshd.watchers.detector.ballot import Ballot, Decision
from meshd.watchers.detector.watch import TICK_S, Step, Watch, starved, steps
from protocol.messages import Suspicion, Verdict

SETTLE_S = 8.0  # faults end this long before the end, to leave time for a verdict
START_S = 1.0  # agents start within this much of each other


@dataclass(frozen=True, slots=True)
class Scenario:
    """`loss`: the share of messages and probes lost, each on its own; `delay_s`: the one-way
    delay, uniform; faults strike distinct droplets at uniform times after `warmup_s`:
    `crashes` die for good, `pauses` freeze for `pause_s` (SIGSTOP) then resume, `partitions`
    are cut off from everyone for good but keep running."""

    droplets: int = 100
    seconds: float = 60.0
    loss: float = 0.0
    delay_s: tuple[float, float] = (0.0005, 0.005)
    crashes: int = 0
    pauses: int = 0
    pause_s: float = 2.0
    partitions: int = 0  # droplets cut off from everyone for good
    warmup_s: float = 5.0
    seed: int = 1

    def __post_init__(self) -> None:
        if self.droplets < 3:
            raise ValueError("below three droplets the provider is the second opinion")
        if self.crashes + self.pauses + self.partitions >= self.droplets:
            raise ValueError("more faults than droplets")
        if self.seconds < self.warmup_s + SETTLE_S:
            raise ValueError(f"seconds must be at least warmup_s + {SETTLE_S}")


class Kind(Enum):
    CRASH = "crash"
    PAUSE = "pause"
    CUT = "cut"


@dataclass(frozen=True, slots=True)
class Fault:
    kind: Kind
    droplet: str
    at: float


def names(count: int) -> list[str]:
    return [MASTER, *(f"web-{i:04d}" for i in range(1, count))]


class State(Enum):
    UP = "up"
    PAUSED = "paused"
    CRASHED = "crashed"


@dataclass(slots=True, eq=False)
class Agent:
    name: str
    watches: dict[str, Watch] = field(default_factory=dict)
    ballot: Ballot = field(default_factory=Ballot)
    state: State = State.UP
    cut: bool = False
    deferred: list[tuple[bool, Callable[..., None], tuple[object, ...]]] = field(
        default_factory=list
    )
    map_seen: int = -1
    last_refute: float = -math.inf
    next_beat: float = 0.0
    helping: deque[tuple[Agent, str, Asking]] = field(default_factory=deque)
    busy: bool = False
    sent: int = 0
    received: int = 0
    gone_at: float = math.inf  # crashed (for message rates)
    last_beat: float = 0.0
    silent_from: float = 0.0  # its last beat before it crashed or was cut off


@dataclass(slots=True, eq=False)
class Probe:
    done: Callable[[bool], None]
    over: bool = False


@dataclass(slots=True, eq=False)
class Asking:
    """An indirect probe: the helpers asked, and whether one said ok."""

    watch: Watch
    pending: int
    ok: bool = False
    over: bool = False


Event = tuple[float, int, Agent | None, bool, Callable[..., None], tuple[object, ...]]


class Mesh:
    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.rng = random.Random(scenario.seed)
        self.now = 0.0
        self.heap: list[Event] = []
        self.seq = 0
        self.agents = {name: Agent(name) for name in names(scenario.droplets)}
        self.order = sorted(self.agents)  # the view's node names, as `_indirect` sorts them
        self.failed: set[str] = set()
        self.monitors: dict[str, tuple[str, ...]] = {}
        self.map_version = 0
        self.hearers: dict[str, dict[str, Agent]] = {name: {} for name in self.agents}
        self.first_decision: dict[str, float] = {}
        self.records: list[str] = []
        self.record_attempts = self.suspicions = self.refutations = 0
        self.votes_sent = 0  # deliveries of votes and refutations, one per receiver
        self._remap()

    # --- the event loop ----------------------------------------------------------------------

    def at(
        self, when: float, agent: Agent | None, timer: bool, fn: Callable[..., None], *args: object
    ) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (when, self.seq, agent, timer, fn, args))

    def run(self) -> None:
        end = self.scenario.seconds
        while self.heap and self.heap[0][0] <= end:
            self.now, _, agent, timer, fn, args = heapq.heappop(self.heap)
            if agent is not None:
                if agent.state is State.CRASHED:
                    continue
                if agent.state is State.PAUSED:
                    agent.deferred.append((timer, fn, args))
                    continue
                agent.received += not timer
            fn(*args)
        self.now = end

    def delay(self) -> float:
        return self.rng.uniform(*self.scenario.delay_s)

    def send(
        self, sender: Agent, receivers: Sequence[Agent], fn: Callable[..., None], *args: object
    ) -> None:
        """One message (a publish reaches each receiver, or not, on its own)."""
        sender.sent += 1
        for receiver in receivers:
            if sender.cut or receiver.cut or self.rng.random() < self.scenario.loss:
                continue
            self.at(self.now + self.delay(), receiver, False, fn, receiver, *args)

    def start(self, faults: Sequence[Fault]) -> None:
        for agent in self.agents.values():
            began = self.rng.uniform(0.0, START_S)
            agent.next_beat = began
            self.at(began, agent, True, self.beat, agent)
            self.at(began + self.rng.uniform(0.0, TICK_S), agent, True, self.tick, agent)
        for fault in faults:
            agent = self.agents[fault.droplet]
            if fault.kind is Kind.PAUSE:
                self.at(fault.at, None, True, self.pause, agent)
                self.at(fault.at + self.scenario.pause_s, None, True, self.resume, agent)
            else:
                end = self.crash if fault.kind is Kind.CRASH else self.cutoff
                self.at(fault.at, None, True, end, agent)

    # --- faults ------------------------------------------------------------------------------

    def crash(self, agent: Agent) -> None:
        agent.state = State.CRASHED
        agent.gone_at = self.now
        agent.silent_from = agent.last_beat

    def cutoff(self, agent: Agent) -> None:
        agent.cut = True
        agent.silent_from = agent.last_beat

    def pause(self, agent: Agent) -> None:
        agent.state = State.PAUSED

    def resume(self, agent: Agent) -> None:
        agent.state = State.UP
        queued = sorted(agent.deferred, key=lambda event: not event[0])  # timers first
        agent.deferred = []
        for timer, fn, args in queued:
            agent.received += not timer
            fn(*args)

    # --- beats (meshd/agent/membership.py's loop) --------------------------------------------

    def beat(self, agent: Agent) -> None:
        agent.last_beat = self.now
        self.send(agent, list(self.hearers[agent.name].values()), self.on_beat, agent.name)
        agent.next_beat = max(agent.next_beat + BEAT_EVERY_S, self.now)
        self.at(agent.next_beat, agent, True, self.beat, agent)

    def on_beat(self, agent: Agent, droplet: str) -> None:
        watch = agent.watches.get(droplet)
        if watch is not None:
            self.alive(agent, droplet, watch)

    # --- the detector's loop -----------------------------------------------------------------

    def _remap(self) -> None:
        lives = dict.fromkeys(self.agents, 1)
        self.monitors = monitor_map(monitored(lives, self.failed))
        self.map_version += 1

    def refresh(self, agent: Agent) -> None:
        agent.map_seen = self.map_version
        mine = targets_of(agent.name, self.monitors)
        for gone in set(agent.watches) - set(mine):
            del agent.watches[gone]
            self.hearers[gone].pop(agent.name, None)
        for target in mine:
            if target not in agent.watches:
                agent.watches[target] = Watch(target, 1)
                self.hearers[target][agent.name] = agent

    def tick(self, agent: Agent) -> None:
        if agent.map_seen != self.map_version:
            self.refresh(agent)
        may_judge = not starved(list(agent.watches.values()), self.now)
        for target, watch in agent.watches.items():
            for step in steps(watch, self.now, may_judge=may_judge):
                if step is Step.PROBE:
                    watch.probing = True
                    self.probe(agent, target, partial(self.probed, agent, target, watch))
                elif step is Step.SUSPECT:
                    self.suspicions += 1
                    self.vote(agent, target, Verdict.SUSPECT)
                    self.indirect(agent, target, watch)
                elif step is Step.CONFIRM:
                    watch.voted_at = self.now
                    self.vote(agent, target, Verdict.CONFIRM)
                else:
                    self.vote(agent, target, Verdict.CONFIRM)
        self.at(self.now + TICK_S, agent, True, self.tick, agent)

    # --- evidence ----------------------------------------------------------------------------

    def probe(self, prober: Agent, target: str, done: Callable[[bool], None]) -> None:
        """GET /health: answered after a round trip, or failed at the timeout."""
        probe = Probe(done)
        self.send(prober, [self.agents[target]], self.answer, prober, probe)
        self.at(self.now + PROBE_TIMEOUT_S, prober, True, self.probe_over, probe, False)

    def answer(self, target: Agent, prober: Agent, probe: Probe) -> None:
        target.sent += 1
        self.at(self.now + self.delay(), prober, False, self.probe_over, probe, True)

    def probe_over(self, probe: Probe, ok: bool) -> None:
        if not probe.over:
            probe.over = True
            probe.done(ok)

    def probed(self, agent: Agent, target: str, watch: Watch, ok: bool) -> None:
        watch.probing = False
        if ok and agent.watches.get(target) is watch:
            self.alive(agent, target, watch)

    def alive(self, agent: Agent, target: str, watch: Watch) -> None:
        voted = watch.voted is not None
        if watch.alive(self.now) and voted:
            self.vote(agent, target, Verdict.REFUTE)

    def indirect(self, agent: Agent, target: str, watch: Watch) -> None:
        others = [n for n in self.order if n not in (agent.name, target)]
        helpers = self.rng.sample(others, min(HELPERS, len(others)))
        asking = Asking(watch, len(helpers))
        for helper in helpers:
            self.send(agent, [self.agents[helper]], self.on_probe_request, agent, target, asking)
        self.at(self.now + INDIRECT_TIMEOUT_S, agent, True, self.indirect_over, asking)

    def on_probe_request(self, helper: Agent, asker: Agent, target: str, asking: Asking) -> None:
        helper.helping.append((asker, target, asking))
        if not helper.busy:
            self.help_next(helper)

    def help_next(self, helper: Agent) -> None:
        helper.busy = bool(helper.helping)
        if helper.busy:
            asker, target, asking = helper.helping.popleft()
            self.probe(helper, target, partial(self.helped, helper, asker, asking))

    def helped(self, helper: Agent, asker: Agent, asking: Asking, ok: bool) -> None:
        self.send(helper, [asker], self.indirect_answer, asking, ok)
        self.help_next(helper)

    def indirect_answer(self, _: Agent, asking: Asking, ok: bool) -> None:
        if not asking.over:
            asking.ok = asking.ok or ok
            asking.pending -= 1
            if asking.pending == 0:
                self.indirect_over(asking)

    def indirect_over(self, asking: Asking) -> None:
        if not asking.over:
            asking.over = True
            asking.watch.indirect_failed = not asking.ok

    # --- votes -------------------------------------------------------------------------------

    def concerned(self, target: str, agent: Agent) -> list[Agent]:
        """Who receives a vote about `target` from `agent`: its monitors and itself."""
        names = {target, *self.monitors.get(target, ())} - {agent.name}
        return [a for n in sorted(names) if (a := self.agents[n]).state is not State.CRASHED]

    def vote(self, agent: Agent, target: str, verdict: Verdict) -> None:
        vote = Suspicion(target=target, by=agent.name, incarnation=1, verdict=verdict)
        self.publish_vote(agent, vote)
        self.count(agent, vote)

    def publish_vote(self, agent: Agent, vote: Suspicion) -> None:
        receivers = self.concerned(vote.target, agent)
        self.votes_sent += len(receivers)
        self.send(agent, receivers, self.on_vote, vote)

    def on_vote(self, agent: Agent, vote: Suspicion) -> None:
        if vote.target == agent.name and vote.verdict is not Verdict.REFUTE:
            self.refute(agent)
            return
        watch = agent.watches.get(vote.target)
        heard = watch is not None and watch.last_ok is not None and not watch.suspected
        if heard and watch is not None and vote.verdict is Verdict.SUSPECT:
            watch.suspected = True
            self.indirect(agent, vote.target, watch)
        self.count(agent, vote)

    def refute(self, agent: Agent) -> None:
        if self.now - agent.last_refute < TICK_S:
            return
        agent.last_refute = self.now
        self.refutations += 1
        vote = Suspicion(target=agent.name, by=agent.name, incarnation=1, verdict=Verdict.REFUTE)
        self.publish_vote(agent, vote)

    def count(self, agent: Agent, vote: Suspicion) -> None:
        if vote.by == vote.target and vote.verdict is Verdict.REFUTE:
            watch = agent.watches.get(vote.target)
            if watch is not None:
                self.alive(agent, vote.target, watch)
        decision = agent.ballot.count(vote, self.monitors.get(vote.target, ()))
        if decision is not None:
            self.decided(agent, decision)

    def decided(self, agent: Agent, decision: Decision) -> None:
        self.first_decision.setdefault(decision.target, self.now)
        if not agent.cut:  # JetStream is out of its reach
            self.at(self.now + 2 * self.delay(), None, False, self.create_record, decision)

    def create_record(self, decision: Decision) -> None:
        self.record_attempts += 1
        if decision.target in self.records:
            return  # KV create refuses: another agent recorded it
        self.records.append(decision.target)
        self.at(self.now + self.delay(), None, False, self.forget, decision.target)

    def forget(self, droplet: str) -> None:
        """Every agent's view now has the failure: the droplet leaves the monitor map."""
        self.failed.add(droplet)
        self._remap()
