"""Which datastores the `backups` leader looks after, which run just now (their droplet's
report says so), on which schedule, and which of them are overdue. Each datastore's schedule
is the one its allocation carries (its project's `backups` setting, else the seed's:
`meshd.core.backup_policy`); an overdue one is alerted once, until it is backed up again."""

from __future__ import annotations

from collections.abc import Iterable

from meshd.agent.meshview import MeshView
from meshd.core.backup_policy import (
    SCHEDULES,
    BackupName,
    Schedule,
    datastore_schedules,
    overdue,
)
from protocol import subjects
from protocol.messages import Allocation, InstanceState

Datastore = tuple[str, str, str]  # project, env, service


def placed_datastores(allocations: dict[str, Allocation]) -> list[Allocation]:
    """The datastores of a kind backed up that run somewhere, by allocation key."""
    return [a for _, a in sorted(allocations.items()) if a.service_kind in SCHEDULES and a.droplets]


def not_running(view: MeshView, allocation: Allocation) -> str | None:
    """Why `allocation`'s datastore cannot be dumped on its droplet just now, as the droplet's
    failure record or report says (None: it runs there). A droplet rebuilt after a failure
    reports its datastore `starting` while the snapshot's data come back: that is no failure
    to alert about but a backup to take again a little later."""
    droplet = allocation.droplets[0]
    if (record := view.failures.get(droplet)) is not None:  # until it serves all it ran again
        return f"{droplet} failed; the mesh is recovering it ({record.state})"
    key = (allocation.project, allocation.env, allocation.service)
    node, card = view.nodes.get(droplet), view.cards.get(droplet)
    if node is not None and card is not None and card.incarnation != node.incarnation:
        node = None  # its report is of the life before (the card goes first)
    states = [
        i.state for i in (node.instances if node else ()) if (i.project, i.env, i.service) == key
    ]
    if {InstanceState.RUNNING, InstanceState.UNHEALTHY} & set(states):
        return None
    where = subjects.alloc_key(*key)
    if not states:
        return f"{where} is not running on {droplet} yet (its report names no instance of it)"
    return f"{where} is not running on {droplet} just now ({', '.join(sorted(states))})"


def retention(allocations: Iterable[Allocation]) -> dict[Datastore, float]:
    """How long the backups of each datastore are kept (seconds), placed or not."""
    return {datastore: s.keep_s for datastore, s in datastore_schedules(allocations).items()}


class Overdue:
    """When each datastore was first seen (one never backed up is overdue counted from then)
    and which were alerted as overdue."""

    def __init__(self) -> None:
        self._seen: dict[Datastore, float] = {}  # datastore -> first seen (epoch)
        self._alerted: set[Datastore] = set()  # overdue, told once until backed up

    def newly(
        self, datastore: Datastore, last: BackupName | None, now: float, schedule: Schedule
    ) -> bool:
        """Whether `datastore` is overdue and not alerted as such yet (then it is now)."""
        since = self._seen.setdefault(datastore, now)
        if datastore in self._alerted or not overdue(last, since, now, schedule):
            return False
        self._alerted.add(datastore)
        return True

    def backed_up(self, datastore: Datastore) -> None:
        self._alerted.discard(datastore)
