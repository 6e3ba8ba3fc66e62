"""Records several roles and `meshctl` read from the store: the scheduler's last placement,
the restart requests per service, the operator's variables, the releases and the release
each environment runs, and a droplet's snapshot index.
Reading them lives here, not in the role that writes them, so that no role imports another."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TypeVar

from meshd.agent.store import Store
from meshd.core.allocations import ConfigLayers, ReleaseTargets
from meshd.core.placement import Placement
from protocol import subjects
from protocol.base import Message
from protocol.codec import decode
from protocol.envconfig import ConfigVars
from protocol.errors import ProtocolError
from protocol.messages import JetStreamServers, PlacementRecord, RestartRequest, SnapshotIndex
from protocol.releases import Release, ReleaseTarget

log = logging.getLogger(__name__)
M = TypeVar("M", bound=Message)


@dataclass(frozen=True, slots=True)
class LastPlacement:
    placement: Placement
    spec_revision: int  # the desired-state revision it was made for
    revision: int  # of the record itself: the next one is written only over this one


@dataclass(frozen=True, slots=True)
class IndexRead:
    """A droplet's snapshot index as read, and its revision (0: there is none yet)."""

    index: SnapshotIndex | None
    revision: int


async def last_placement(store: Store) -> LastPlacement | None:
    """The scheduler's last placement, or None if there is none (or it cannot be read)."""
    entry = await store.get(subjects.DESIRED_BUCKET, subjects.PLACEMENT_KEY)
    if entry is None or entry.value is None:
        return None
    try:
        record = decode(entry.value, PlacementRecord)
        placement = Placement.from_data(record.placement)
        return LastPlacement(placement, record.spec_revision, entry.revision)
    except (ProtocolError, KeyError, TypeError) as err:
        log.warning("Last placement unreadable; treating it as absent. error=%s", err)
        return None


async def restart_counts(store: Store) -> dict[str, int]:
    """Restart requests per allocation key (`meshctl restart`); unreadable ones are skipped."""
    found = await decoded(store, subjects.DESIRED_BUCKET, subjects.RESTARTS, RestartRequest)
    return {subjects.alloc_key(r.project, r.env, r.service): r.count for r in found}


async def config_layers(store: Store) -> ConfigLayers:
    """The operator's variables (`meshctl config`) by project and environment (None: the
    whole project); unreadable ones are skipped."""
    found = await decoded(store, subjects.DESIRED_BUCKET, subjects.CONFIG_VARS, ConfigVars)
    return {(layer.project, layer.env): layer for layer in found}


async def release_targets(store: Store) -> ReleaseTargets:
    """The release each project environment runs, by (project, env); unreadable ones are
    skipped (the environment runs what `publish` says, logged)."""
    found = await decoded(store, subjects.DESIRED_BUCKET, subjects.RELEASE_TARGETS, ReleaseTarget)
    return {(target.project, target.env): target for target in found}


async def releases_of(store: Store, project: str, env: str | None = None) -> list[Release]:
    """The release records of a project (of one environment), unreadable ones skipped."""
    pattern = f"{project}.{env}.*" if env else f"{project}.*.*"
    return await decoded(store, subjects.RELEASES_BUCKET, pattern, Release)


async def snapshot_index(store: Store, droplet: str) -> IndexRead:
    """The droplet's snapshots (no index if it has none or it is unreadable)."""
    entry = await store.get(subjects.SNAPSHOTS_BUCKET, subjects.snapshot_key(droplet))
    if entry is None or entry.value is None:
        return IndexRead(None, 0)
    try:
        return IndexRead(decode(entry.value, SnapshotIndex), entry.revision)
    except ProtocolError as err:
        log.error("Snapshot index unreadable; treated as empty. droplet=%s error=%s", droplet, err)
        return IndexRead(None, entry.revision)


async def write_over(store: Store, bucket: str, key: str, value: bytes, last: int | None) -> int:
    """Write a key over the revision `last` read of it (create it when it had none):
    `Conflict` if anybody wrote it since. How leaders write: a deposed leader's late write
    never lands over its successor's."""
    if last is None or last == 0:
        return await store.create(bucket, key, value)
    return await store.update(bucket, key, value, last=last)


def decode_servers(data: bytes | None) -> JetStreamServers | None:
    """JetStream servers from their wire form; None (logged) when absent or unreadable."""
    if data is None:
        return None
    try:
        return decode(data, JetStreamServers)
    except ProtocolError as err:
        log.warning("Unreadable JetStream servers ignored. error=%s", err)
        return None


async def jetstream_servers(store: Store, key: str) -> JetStreamServers | None:
    """The chosen JetStream servers (`subjects.JETSTREAM_KEY`) or those that run since the
    last move (`subjects.JETSTREAM_APPLIED_KEY`), or None."""
    entry = await store.get(subjects.DESIRED_BUCKET, key)
    return decode_servers(entry.value if entry else None)


async def decoded(store: Store, bucket: str, keys: str, kind: type[M]) -> list[M]:
    """The readable values of `bucket`'s `keys` as `kind`; unreadable ones are logged and
    skipped (a newer writer's, or damaged): readers act on what they can read."""
    found = []
    for key, entry in (await store.entries(bucket, keys)).items():
        if entry.value is None:
            continue
        try:
            found.append(decode(entry.value, kind))
        except ProtocolError as err:
            log.warning("Unreadable %s skipped. key=%s error=%s", kind.KIND, key, err)
    return found
