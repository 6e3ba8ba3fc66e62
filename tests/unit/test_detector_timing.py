"""The detector's pure halves on a fake clock, in milliseconds: when a monitor probes,
suspects and confirms (`watch`), and how votes add up (`ballot`)."""

from __future__ import annotations

from meshd.watchers.detector.ballot import Ballot, Decision
from meshd.watchers.detector.watch import (
    CONFIRM_AFTER_S,
    REVOTE_S,
    STEADY_PROBE_EVERY_S,
    SUSPECT_AFTER_S,
    TICK_S,
    Step,
    Watch,
    starved,
    steps,
)
from protocol.messages import Suspicion, Verdict

BEAT_S = 0.5


def run(
    watch: Watch, until: float, beats_until: float, indirect_failed: bool = True
) -> dict[float, list[Step]]:
    """Tick every TICK_S from 0 to `until`; the target beats every 0.5 s until `beats_until`
    and probes never answer; the steps taken at each tick."""
    taken: dict[float, list[Step]] = {}
    now = 0.0
    next_beat = 0.0
    while now <= until + 1e-9:
        while next_beat <= min(now, beats_until) + 1e-9:
            watch.alive(next_beat)
            next_beat += BEAT_S
        found = steps(watch, now, may_judge=True)
        if Step.SUSPECT in found:
            watch.indirect_failed = indirect_failed
        if Step.CONFIRM in found:
            watch.voted_at = now  # sent
        watch.probing = False  # each probe is answered (or not) within the tick
        if found:
            taken[round(now, 2)] = found
        now += TICK_S
    return taken


def test_while_beats_flow_a_monitor_probes_once_a_period_and_suspects_nobody() -> None:
    watch = Watch("10.0.0.2", incarnation=1)
    taken = run(watch, until=20.0, beats_until=20.0)
    probes = [t for t, found in taken.items() if Step.PROBE in found]
    assert len(probes) == 1 + int(20.0 / STEADY_PROBE_EVERY_S)  # one per period, not 80
    assert all(found == [Step.PROBE] for found in taken.values())


def test_a_silent_target_is_probed_at_once_then_suspected_then_confirmed() -> None:
    watch = Watch("10.0.0.2", incarnation=1)
    taken = run(watch, until=10.0, beats_until=5.0)  # the last beat at 5.0 s
    after = {t: found for t, found in taken.items() if t > 5.0}
    first_probe = min(t for t, found in after.items() if Step.PROBE in found)
    assert first_probe - 5.0 <= 1.0  # no waiting for the steady period
    suspected = [t for t, found in after.items() if Step.SUSPECT in found]
    confirmed = [t for t, found in after.items() if Step.CONFIRM in found]
    assert suspected == [5.0 + SUSPECT_AFTER_S]
    assert len(confirmed) == 1
    assert 5.0 + CONFIRM_AFTER_S <= confirmed[0] <= 5.0 + CONFIRM_AFTER_S + TICK_S
    revotes = [t for t, found in after.items() if Step.REVOTE in found]
    assert revotes and revotes[0] - confirmed[0] >= REVOTE_S  # standing vote sent again


def test_a_pause_shorter_than_the_window_is_suspected_at_most_never_confirmed() -> None:
    watch = Watch("10.0.0.2", incarnation=1)
    # beats until 5.0, silent until 7.0 (a 2 s pause), then beating again
    taken = run(watch, until=5.0, beats_until=5.0)
    now = 5.25
    while now < 7.0:
        taken[now] = steps(watch, now, may_judge=True)
        watch.probing = False
        now += TICK_S
    assert Step.SUSPECT in [s for found in taken.values() for s in found]
    assert watch.alive(7.0) is True  # its next beat takes the suspicion back
    assert all(Step.CONFIRM not in found for found in taken.values())


def test_a_target_an_indirect_probe_still_reaches_is_not_confirmed() -> None:
    watch = Watch("10.0.0.2", incarnation=1)
    taken = run(watch, until=10.0, beats_until=5.0, indirect_failed=False)
    assert all(Step.CONFIRM not in found for found in taken.values())


def test_a_monitor_that_hears_none_of_its_targets_suspects_itself() -> None:
    silent = [Watch("a", 1, last_ok=0.0), Watch("b", 1, last_ok=0.1)]
    assert starved(silent, now=SUSPECT_AFTER_S + 0.2)
    assert not starved([Watch("a", 1, last_ok=0.0), Watch("b", 1, last_ok=1.9)], now=2.0)
    assert not starved(silent[:1], now=10.0)  # one target: its problem, not ours
    assert steps(Watch("a", 1, last_ok=0.0), 5.0, may_judge=False) == [Step.PROBE]


def vote(by: str, verdict: Verdict, incarnation: int = 7, target: str = "web1") -> Suspicion:
    return Suspicion(target=target, by=by, incarnation=incarnation, verdict=verdict)


MONITORS = ("master", "web2", "web3")


def test_a_majority_of_the_monitors_decides_once_per_life() -> None:
    ballot = Ballot()
    assert ballot.count(vote("master", Verdict.CONFIRM), MONITORS) is None
    assert ballot.count(vote("outsider", Verdict.CONFIRM), MONITORS) is None  # not a monitor
    decided = ballot.count(vote("web3", Verdict.CONFIRM), MONITORS)
    assert decided == Decision("web1", 7, ("master", "web3"))
    assert ballot.count(vote("web2", Verdict.CONFIRM), MONITORS) is None  # decided already
    assert ballot.count(vote("master", Verdict.CONFIRM, incarnation=8), MONITORS) is None
    assert ballot.count(vote("web2", Verdict.CONFIRM, incarnation=8), MONITORS) == Decision(
        "web1", 8, ("master", "web2")
    )  # a new life is a new vote


def test_a_refutation_voids_the_votes_and_old_lives_do_not_count() -> None:
    ballot = Ballot()
    ballot.count(vote("master", Verdict.CONFIRM), MONITORS)
    ballot.count(vote("web1", Verdict.REFUTE), MONITORS)  # the target itself answers
    assert ballot.count(vote("web2", Verdict.CONFIRM), MONITORS) is None  # one vote, not two
    assert ballot.count(vote("web3", Verdict.CONFIRM, incarnation=6), MONITORS) is None
    assert ballot.count(vote("web3", Verdict.CONFIRM), MONITORS) == Decision(
        "web1", 7, ("web2", "web3")
    )
    ballot.forget({"master", "web2"})  # web1 left the mesh
    assert ballot.votes == {} and ballot.decided == set()
