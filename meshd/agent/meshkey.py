"""The mesh key on the droplets it is sealed to (docs/secrets.md): its private half, opened
from this droplet's holder entry (`mesh_secrets/holder.<droplet>`) with the droplet's own key;
and how a holder entry is made for a droplet (or for the operator's escrow key), and which
droplets get one: the trusted ones that reported their key. The `secrets` role seals it there
for each trusted droplet; the `backups` leader opens backups with it; `meshctl backup
restore-mesh` seals a lost mesh's key to the droplets of the new one."""

from __future__ import annotations

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
    to_text,
)
from meshd.core.secret_plan import trusted
from meshd.core.spec import MASTER
from protocol import subjects
from protocol.codec import decode
from protocol.messages import NodeStatus
from protocol.secrets import MeshKey, SealedSecret

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
