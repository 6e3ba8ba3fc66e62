"""The vote about a target's death (pure): each monitor's latest verdict, for the newest life
(incarnation) voted on; a majority of the target's monitors confirming decides, once per life.
A refutation by the target itself voids every vote about it."""

from __future__ import annotations

from dataclasses import dataclass, field

from meshd.core.monitors import majority
from protocol.messages import Suspicion, Verdict


@dataclass(slots=True)
class Votes:
    """The latest verdict of each voter about one target, for one incarnation."""

    incarnation: int
    verdicts: dict[str, Verdict] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Decision:
    """A majority confirmed the death of `target`'s life `incarnation`."""

    target: str
    incarnation: int
    confirmed_by: tuple[str, ...]


class Ballot:
    def __init__(self) -> None:
        self.votes: dict[str, Votes] = {}
        self.decided: set[tuple[str, int]] = set()  # (droplet, incarnation) confirmed

    def count(self, vote: Suspicion, monitors: tuple[str, ...]) -> Decision | None:
        """Count a vote (`monitors`: the target's); the decision if this vote made one."""
        if vote.by == vote.target and vote.verdict is Verdict.REFUTE:
            self.votes.pop(vote.target, None)  # it lives: every vote about it is void
            return None
        votes = self.votes.get(vote.target)
        if votes is None or vote.incarnation > votes.incarnation:
            votes = self.votes[vote.target] = Votes(vote.incarnation)
        elif vote.incarnation < votes.incarnation:
            return None  # about an older life
        votes.verdicts[vote.by] = vote.verdict
        confirming = tuple(sorted(m for m in monitors if votes.verdicts.get(m) is Verdict.CONFIRM))
        if not monitors or len(confirming) < majority(len(monitors)):
            return None
        if (vote.target, votes.incarnation) in self.decided:
            return None
        self.decided.add((vote.target, votes.incarnation))
        return Decision(vote.target, votes.incarnation, confirming)

    def forget(self, present: set[str]) -> None:
        """Drop what is known of droplets no longer in the mesh (bounded memory)."""
        for target in set(self.votes) - present:
            del self.votes[target]
        self.decided = {(d, i) for d, i in self.decided if d in present}
