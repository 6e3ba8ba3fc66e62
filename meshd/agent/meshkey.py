"""The mesh key on a droplet it is sealed to (docs/secrets.md): its private half, opened from
this droplet's holder entry (`mesh_secrets/holder.<droplet>`) with the droplet's own key. The
`secrets` role seals it there for each trusted droplet; the `backups` leader opens backups
with it."""

from __future__ import annotations

from meshd.agent.sealkey import DropletKeys
from meshd.agent.store import Store
from meshd.core.sealing import KeyPair, SealError, from_text, holder_context, open_sealed
from protocol import subjects
from protocol.codec import decode
from protocol.secrets import MeshKey, SealedSecret


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
