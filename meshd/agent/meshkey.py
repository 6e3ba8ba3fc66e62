"""The mesh key on the droplets it is sealed to (docs/secrets.md): its private half, opened
from this droplet's holder entry (`mesh_secrets/holder.<droplet>`) with the droplet's own key;
and how a holder entry is made for a droplet (or for the operator's escrow key), and which
droplets get one: the trusted ones that reported their key. The `secrets` role seals it there
for each trusted droplet; the `backups` leader opens backups with it; `meshctl backup
restore-mesh` seals a lost mesh's key to the droplets of the new one."""

from __future__ import annotations

import time
from collections.abc import Mapping

from meshd.agent.records import jetstream_servers
from meshd.agent.sealkey import DropletKeys
from meshd.agent.store import Store
from meshd.core.sealing import (
    KeyPair,
    SealError,
    fingerprint,
    from_text,
    holder_context,
    open_sealed,
    seal,
    seal_value,
    to_text,
)
from meshd.core.secret_plan import trusted
from meshd.core.spec import MASTER
from protocol import subjects
from protocol.codec import decode, encode
from protocol.messages import NodeStatus
from protocol.secrets import MeshKey, SealedSecret, SecretScope, SecretValue

HOLDER_SECRET = "mesh_key"  # the name a holder entry gives what it holds
ESCROW = "escrow"  # the droplet name the escrowed mesh key is sealed for (its context)


async def mesh_public_key(store: Store) -> MeshKey | None:
    """The public half of the mesh key, if the `secrets` role has made it."""
    entry = await store.get(subjects.SECRETS_BUCKET, subjects.MESH_KEY)
    return decode(entry.value, MeshKey) if entry is not None and entry.value else None


async def open_mesh_key(store: Store, droplet: str, keys: DropletKeys) -> KeyPair | None:
    """The mesh key pair, if it is sealed to one of `droplet`'s keys; else None."""
    mesh = await mesh_public_key(store)
    found = await store.get(subjects.SECRETS_BUCKET, subjects.holder_key(droplet))
    if mesh is None or found is None or found.value is None:
        return None
    public = from_text(mesh.public, "key")
    holder = decode(found.value, SealedSecret)
    for own in keys.all():
        try:
            private = open_sealed(
                own, from_text(holder.sealed), holder_context(holder.droplet, holder.key)
            )
        except SealError:
            continue
        pair = KeyPair.from_private(private)
        if pair.public == public:
            return pair
    return None


def holder_entry(mesh: KeyPair, droplet: str, public: bytes, fence: int) -> SealedSecret:
    """The mesh key's private half sealed to `droplet`'s key `public` (`ESCROW`: the
    operator's escrow key), as its holder entry keeps it; `fence` says who wrote it (0: the
    operator, from `meshctl`)."""
    key = fingerprint(public)
    return SealedSecret(
        droplet=droplet,
        name=HOLDER_SECRET,
        project=None,
        env=None,
        source=subjects.MESH_KEY,
        version=0,
        sealed=to_text(seal(public, mesh.private, holder_context(droplet, key))),
        key=key,
        fence=fence,
    )


def seal_keys(nodes: Mapping[str, NodeStatus]) -> dict[str, bytes]:
    """The public key each droplet reported to be sealed to, by droplet."""
    return {name: from_text(node.seal_key, "key") for name, node in nodes.items() if node.seal_key}


async def trusted_droplets(store: Store, nodes: Mapping[str, NodeStatus]) -> set[str]:
    """The droplets of `nodes` that may hold the mesh key: all of a small mesh, else master
    and the JetStream servers as they run."""
    running = await jetstream_servers(store, subjects.JETSTREAM_APPLIED_KEY)
    return trusted(nodes, [s.name for s in running.servers] if running else [MASTER])


async def put_mesh_secret(store: Store, name: str, value: bytes, set_by: str) -> int | None:
    """Store `value` as the mesh secret `name` (a new version, sealed to the mesh key; the
    `secrets` role seals it to the trusted droplets); its version, or None when there is no
    mesh key yet. Raises `Conflict` when somebody else wrote it meanwhile."""
    mesh = await mesh_public_key(store)
    if mesh is None:
        return None
    key = subjects.secret_value_key(name)
    entry = await store.get(subjects.SECRETS_BUCKET, key)
    previous = decode(entry.value, SecretValue) if entry is not None and entry.value else None
    version = previous.version + 1 if previous else 1
    stored = SecretValue(
        name=name,
        scope=SecretScope.MESH,
        project=None,
        env=None,
        version=version,
        sealed=seal_value(from_text(mesh.public, "mesh key"), key, version, value),
        mesh_key=mesh.fingerprint,
        set_by=set_by,
        set_at=time.time(),
        generated=True,
    )
    if entry is None or entry.value is None:
        await store.create(subjects.SECRETS_BUCKET, key, encode(stored))
    else:
        await store.update(subjects.SECRETS_BUCKET, key, encode(stored), last=entry.revision)
    return version
