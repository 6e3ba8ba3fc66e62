"""What `meshctl backup restore-mesh` takes from a lost mesh's backups into a new mesh (pure;
docs/backups.md "Losing the whole mesh"): the newest `state` and `secrets` documents, which of
their entries are written back and which of the new mesh's own are dropped, where the new mesh
keeps its backups, and the backup each datastore it runs is restored from.

What is written back: the operator's intent and the secrets. From the state: the published
spec (with its notification settings), the operator's variables (`config.*`), the backup target
and the release records; not what the new mesh works out again by itself (placement,
allocations, JetStream servers, nodes, leases, failures, snapshots) nor what belongs to the
old droplets (detection holds, restart requests, alerts sent) nor the releases' targets (their
artifacts were in the lost mesh's object store, which is not backed up). From the secrets:
every value (sealed to the old mesh key, which the new mesh adopts) and the escrow key; not
what was sealed to the old droplets.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping

from meshd.core.backup_policy import MESH_PARTS, BackupName, newest, parse_backup_key
from meshd.core.sealing import KeyPair
from protocol import subjects
from protocol.backups import BackupTargetSpec
from protocol.codec import decode
from protocol.errors import ProtocolError
from protocol.secrets import MeshKey, SecretValue

Datastore = tuple[str, str, str]  # project, env, service
CONFIG_PREFIX = "config."
VALUE_PREFIX = "value."
SEALED_PREFIX = "sealed."
HOLDER_PREFIX = "holder."


def newest_documents(keys: Iterable[str]) -> dict[str, BackupName]:
    """The newest `state` and `secrets` document among a target's keys, by kind."""
    parts = set(MESH_PARTS.values())
    names = [n for key in keys if (n := parse_backup_key(key)) and n.datastore in parts]
    return {name.kind: name for name in newest(names).values()}


def datastore_backups(
    keys: Iterable[str], running: Iterable[tuple[str, str, str, str]]
) -> tuple[list[BackupName], list[Datastore]]:
    """For each datastore that runs (project, env, service, kind): its newest backup of its
    kind among `keys`; and the datastores that have none. Both sorted."""
    kinds = {(project, env, service): kind for project, env, service, kind in running}
    names = [
        n
        for key in keys
        if (n := parse_backup_key(key)) is not None and kinds.get(n.datastore) == n.kind
    ]
    latest = newest(names)
    found = [latest[datastore] for datastore in sorted(latest)]
    return found, sorted(set(kinds) - set(latest))


def desired_entries(bucket: Mapping[str, bytes]) -> dict[str, bytes]:
    """The `mesh_desired` entries a new mesh takes: the published spec and the operator's
    variables (the backup target apart: `kept_target`)."""
    return {
        key: value
        for key, value in sorted(bucket.items())
        if key == subjects.DESIRED_KEY or key.startswith(CONFIG_PREFIX)
    }


def secret_values(bucket: Mapping[str, bytes]) -> dict[str, bytes]:
    """The secrets' values (sealed to the mesh key) of a `mesh_secrets` bucket."""
    return {key: value for key, value in sorted(bucket.items()) if key.startswith(VALUE_PREFIX)}


def dropped_secrets(current: Iterable[str], holders: Iterable[str]) -> list[str]:
    """The new mesh's entries that go once it adopted the old mesh key: what its `secrets`
    role sealed to its droplets from values that are no more (it seals the restored ones
    again), and holder entries other than `holders` (the old key sealed to its droplets)."""
    keep = set(holders)
    return sorted(
        key
        for key in current
        if key.startswith(SEALED_PREFIX) or (key.startswith(HOLDER_PREFIX) and key not in keep)
    )


def foreign_values(entries: Mapping[str, bytes], fingerprint: str) -> list[str]:
    """The values sealed to another mesh key than `fingerprint`: made by a `secrets` role that
    had not switched to the adopted key yet, they would open nowhere any more (it makes them
    again). A value this version cannot read is left alone."""
    found = []
    for key, value in sorted(entries.items()):
        if key.startswith(VALUE_PREFIX):
            with contextlib.suppress(ProtocolError):
                if decode(value, SecretValue).mesh_key != fingerprint:
                    found.append(key)
    return found


def escrow_key_entry(bucket: Mapping[str, bytes], escrow: KeyPair, by: str, at: float) -> MeshKey:
    """The escrow key's public half for the new mesh: the old mesh's entry when it is the
    key the operator restores with, else one made from that key (the mesh key is sealed to
    it, whatever the document says)."""
    found = bucket.get(subjects.ESCROW_KEY)
    if found:
        try:
            old = decode(found, MeshKey)
        except ProtocolError:
            old = None
        if old is not None and old.public == escrow.public_text:
            return old
    return MeshKey(
        public=escrow.public_text, fingerprint=escrow.fingerprint, created_by=by, created_at=at
    )


def kept_target(
    old: BackupTargetSpec | None, given: dict[str, str], by: str, at: float
) -> BackupTargetSpec:
    """Where the new mesh keeps its backups: the old mesh's target when it is the bucket and
    prefix restored from (its settings as they were), else the one restored from."""
    if old is not None and old.name == "s3" and _place(old.config) == _place(given):
        return old
    return BackupTargetSpec(name="s3", config=dict(given), set_by=by, set_at=at)


def _place(config: Mapping[str, object]) -> tuple[str, str, str]:
    return (
        str(config.get("endpoint", "")).strip().rstrip("/"),
        str(config.get("bucket", "")).strip(),
        str(config.get("prefix", "") or "").strip().strip("/"),
    )


def age_text(seconds: float) -> str:
    """How old a backup is, the way a person reads it."""
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"
