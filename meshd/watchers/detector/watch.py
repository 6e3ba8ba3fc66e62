"""What one monitor knows of one target, and what it does next (pure: `now` is given).

Evidence of life is a liveness beat (every 0.5 s) or a good HTTP probe of the target's agent.
While beats flow, a monitor sends no probes but one per `STEADY_PROBE_EVERY_S` (SWIM's one
probe per period): the beats are the evidence. Once a target has been silent for
`PROBE_AFTER_S` (a beat missed), it is probed directly every `SILENT_PROBE_EVERY_S`; after
`SUSPECT_AFTER_S` of silence it is suspected (and probed through helpers too); after
`CONFIRM_AFTER_S` of silence, when the indirect probe failed too, this monitor confirms. A
standing confirmation is sent again every `REVOTE_S`: core NATS may have lost it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from protocol.messages import Verdict

TICK_S = 0.25
STEADY_PROBE_EVERY_S = 5.0
PROBE_AFTER_S = 0.75  # a beat is late: ask the agent itself
SILENT_PROBE_EVERY_S = 0.25
SUSPECT_AFTER_S = 1.5  # silence before a suspicion
CONFIRM_AFTER_S = 2.8  # silence before a confirmation: a 2 s pause is never confirmed
REVOTE_S = 1.0


class Step(StrEnum):
    PROBE = "probe"  # probe the target directly
    SUSPECT = "suspect"  # publish a suspicion, and probe through helpers
    CONFIRM = "confirm"  # confirm (after the provider's word when there is one monitor)
    REVOTE = "revote"  # send the standing confirmation again


@dataclass(slots=True)
class Watch:
    """One monitor's knowledge of one target (times on the monotonic clock)."""

    address: str
    incarnation: int
    last_ok: float | None = None  # None: not seen alive since this agent started
    suspected: bool = False
    voted: Verdict | None = None
    voted_at: float = 0.0  # when the vote was last sent
    indirect_failed: bool | None = None  # None: not asked yet
    next_probe: float = 0.0
    probing: bool = False

    def silence(self, now: float) -> float:
        return math.inf if self.last_ok is None else now - self.last_ok

    def alive(self, now: float) -> bool:
        """Evidence of life came: True when it ends a suspicion (the vote is taken back)."""
        self.last_ok = now
        if not self.suspected:
            return False
        self.suspected = False
        self.indirect_failed = None
        self.voted = None
        return True


def steps(watch: Watch, now: float, *, may_judge: bool) -> list[Step]:
    """What to do for this target now. `may_judge` is False while this monitor hears none of
    its targets or has no connection: then it probes, but suspects nobody."""
    found: list[Step] = []
    silence = watch.silence(now)
    quiet = silence >= PROBE_AFTER_S or watch.suspected
    if quiet and watch.next_probe - now > SILENT_PROBE_EVERY_S:
        watch.next_probe = now  # the beats stopped: probe now, not at the steady pace
    if not watch.probing and now >= watch.next_probe:
        found.append(Step.PROBE)
        watch.next_probe = now + (SILENT_PROBE_EVERY_S if quiet else STEADY_PROBE_EVERY_S)
    if watch.last_ok is None or not may_judge:
        return found
    if silence >= SUSPECT_AFTER_S and not watch.suspected:
        watch.suspected = True
        found.append(Step.SUSPECT)
    if (
        watch.suspected
        and silence >= CONFIRM_AFTER_S
        and watch.indirect_failed is not False
        and watch.voted is not Verdict.CONFIRM
    ):
        watch.voted = Verdict.CONFIRM  # claimed now; the provider may still say no
        watch.voted_at = math.inf  # sent (and then repeated) only once it is sure
        found.append(Step.CONFIRM)
    elif watch.voted is Verdict.CONFIRM and now - watch.voted_at >= REVOTE_S:
        # A vote published while this agent's nats-server connection moved (the dead droplet
        # may have been its server) is lost, and one lost vote of three can keep a majority
        # from ever forming.
        watch.voted_at = now
        found.append(Step.REVOTE)
    return found


def starved(watches: list[Watch], now: float) -> bool:
    """Lifeguard's local health: hearing none of two or more targets at once is more likely
    this monitor's own problem than theirs."""
    seen = [w for w in watches if w.last_ok is not None]
    return len(seen) >= 2 and all(w.silence(now) >= SUSPECT_AFTER_S for w in seen)
