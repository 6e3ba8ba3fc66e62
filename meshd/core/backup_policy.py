"""When each datastore is backed up, which backups are kept, and how they are named (pure; the
`backups` role acts on it). The seed's schedule: databases every 6 hours kept 14 days (Redis
alike), unless the project's `backups` setting says otherwise (it comes with the datastore's
allocation: `schedule_of`); a backup older than twice its interval is overdue (a critical
alert). Nothing is deleted before a newer backup of the same datastore is stored: the newest
is always kept.

A backup's key says what it holds, so that listing the target is the index:
`<kind>/<project>/<env>/<service>/<YYYYmmddTHHMMSSZ>-<nonce>.enc` (UTC). The one other object
a target keeps is `ESCROW_OBJECT`, which no listing counts as a backup.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from protocol.messages import Allocation

HOUR_S = 3600.0
DAY_S = 24 * HOUR_S


@dataclass(frozen=True, slots=True)
class Schedule:
    every_s: float
    keep_s: float


SCHEDULES = {
    "database": Schedule(every_s=6 * HOUR_S, keep_s=14 * DAY_S),
    "redis": Schedule(every_s=6 * HOUR_S, keep_s=14 * DAY_S),
}
# The mesh itself: its state (every KV bucket but the secrets) and its sealed secrets, each a
# "datastore" of project and environment `mesh` (`MESH_PARTS`).
MESH_SCHEDULES = {
    "state": Schedule(every_s=HOUR_S, keep_s=7 * DAY_S),
    "secrets": Schedule(every_s=HOUR_S, keep_s=30 * DAY_S),
}
MESH = "mesh"
MESH_PARTS = {kind: (MESH, MESH, kind) for kind in MESH_SCHEDULES}
ALL_SCHEDULES = SCHEDULES | MESH_SCHEDULES
# The mesh key as sealed to the operator's escrow key (`mesh_secrets/escrowed-mesh-key`: only
# that key's private half, which the mesh never holds, opens it), stored again beside the
# backups with each `secrets` document: what `backup restore-mesh` opens first once the whole
# mesh is lost. Its key is no backup's (`parse_backup_key` says None), so it is never listed,
# counted or pruned as one.
ESCROW_OBJECT = "escrow/mesh-key"
_STAMP = "%Y%m%dT%H%M%SZ"
_KEY = re.compile(
    r"(?P<kind>[a-z]+)/(?P<project>[a-z0-9_-]+)/(?P<env>[a-z0-9_-]+)/(?P<service>[a-z0-9_-]+)/"
    r"(?P<stamp>\d{8}T\d{6}Z)-(?P<nonce>[a-z0-9]+)\.enc"
)


@dataclass(frozen=True, slots=True)
class BackupName:
    """What a backup's key says: the datastore it holds and when it was taken."""

    kind: str
    project: str
    env: str
    service: str
    at: float
    key: str

    @property
    def datastore(self) -> tuple[str, str, str]:
        return self.project, self.env, self.service


def backup_key(kind: str, project: str, env: str, service: str, at: float, nonce: str) -> str:
    stamp = datetime.fromtimestamp(at, UTC).strftime(_STAMP)
    return f"{kind}/{project}/{env}/{service}/{stamp}-{nonce}.enc"


def parse_backup_key(key: str) -> BackupName | None:
    """The backup a key names; None for anything else in the target (staged files, ...)."""
    found = _KEY.fullmatch(key)
    if found is None:
        return None
    at = datetime.strptime(found["stamp"], _STAMP).replace(tzinfo=UTC).timestamp()
    return BackupName(found["kind"], found["project"], found["env"], found["service"], at, key)


def newest(names: Iterable[BackupName]) -> dict[tuple[str, str, str], BackupName]:
    """The newest backup of each datastore."""
    found: dict[tuple[str, str, str], BackupName] = {}
    for name in names:
        if name.datastore not in found or name.at > found[name.datastore].at:
            found[name.datastore] = name
    return found


def schedule_of(kind: str, every_s: float | None = None, keep_s: float | None = None) -> Schedule:
    """The schedule of a datastore of `kind` whose project sets `every_s` and `keep_s` (None:
    its kind's, the seed's)."""
    default = ALL_SCHEDULES[kind]
    return Schedule(
        every_s=default.every_s if every_s is None else every_s,
        keep_s=default.keep_s if keep_s is None else keep_s,
    )


def datastore_schedules(
    allocations: Iterable[Allocation],
) -> dict[tuple[str, str, str], Schedule]:
    """The schedule of each datastore among `allocations` (those of a kind backed up), as its
    allocation carries its project's setting."""
    return {
        (a.project, a.env, a.service): schedule_of(
            a.service_kind, a.backup_every_s, a.backup_keep_s
        )
        for a in allocations
        if a.service_kind in SCHEDULES
    }


def due(last: BackupName | None, now: float, schedule: Schedule) -> bool:
    """Whether a datastore whose newest backup is `last` is to be backed up now."""
    return last is None or now - last.at >= schedule.every_s


def overdue(last: BackupName | None, since: float, now: float, schedule: Schedule) -> bool:
    """Whether the newest backup is older than twice the interval (or there has been none for
    that long since `since`, when the datastore was first seen): a critical alert."""
    reference = last.at if last is not None else since
    return now - reference > 2 * schedule.every_s


def expired(
    names: Iterable[BackupName],
    now: float,
    keep: Mapping[tuple[str, str, str], float] | None = None,
) -> list[BackupName]:
    """The backups past their retention, oldest first; never a datastore's newest. `keep` is
    the retention of each datastore (seconds) whose project sets one; the others', and
    those of datastores no longer running, are their kind's."""
    keep = keep or {}
    listed = list(names)
    newest_keys = {name.key for name in newest(listed).values()}
    old = [
        name
        for name in listed
        if name.key not in newest_keys
        and name.kind in ALL_SCHEDULES
        and now - name.at > keep.get(name.datastore, ALL_SCHEDULES[name.kind].keep_s)
    ]
    return sorted(old, key=lambda name: name.at)


def backup_summary(
    datastores: Mapping[tuple[str, str, str], Schedule], names: Iterable[BackupName], now: float
) -> list[dict[str, object]]:
    """For `meshctl status`: each datastore (project, env, service) with its newest backup,
    that backup's age and whether it is overdue (twice the interval of its `datastores`
    schedule; a datastore never backed up counts from now, since when it appeared is not
    known here)."""
    latest = newest(names)
    rows: list[dict[str, object]] = []
    for (project, env, service), schedule in sorted(datastores.items()):
        last = latest.get((project, env, service))
        rows.append(
            {
                "project": project,
                "env": env,
                "service": service,
                "last": last.key if last else None,
                "age_s": round(now - last.at, 1) if last else None,
                "overdue": bool(last and overdue(last, now, now, schedule)),
            }
        )
    return rows
