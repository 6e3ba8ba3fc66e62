"""The mesh's own backups (docs/backups.md): its state, every KV bucket but the secrets (what
is published, allocated, released, who failed, the snapshots' index), and the sealed secrets
apart, kept longer. Each is one document: the buckets' live entries as they are, msgpack'd.
The `backups` leader takes them; `meshctl backup restore-mesh` reads them back into a new
mesh."""

from __future__ import annotations

import time
from typing import Any

import msgpack

from meshd.agent.store import Store
from protocol import subjects

FORMAT = "meshd-state/1"
PARTS = {
    "state": tuple(b for b in subjects.BUCKETS if b != subjects.SECRETS_BUCKET),
    "secrets": (subjects.SECRETS_BUCKET,),
}


async def state_document(store: Store, kind: str, mesh: str) -> bytes:
    """The `state` or `secrets` document of the mesh as it is now."""
    buckets: dict[str, dict[str, bytes]] = {}
    for bucket in PARTS[kind]:
        entries = await store.entries(bucket)
        buckets[bucket] = {key: e.value for key, e in sorted(entries.items()) if e.value}
    document: dict[str, Any] = {
        "format": FORMAT,
        "kind": kind,
        "mesh": mesh,
        "taken_at": time.time(),
        "buckets": buckets,
    }
    return msgpack.packb(document, use_bin_type=True)  # type: ignore[no-any-return]


def read_document(data: bytes, kind: str | None = None) -> dict[str, Any]:
    """A state document back (for restores and for checking one); ValueError when `data` is
    no such document (or not one of `kind`)."""
    try:
        document = msgpack.unpackb(data, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as err:
        raise ValueError(f"not a meshd state document ({err})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError("not a meshd state document")
    if kind is not None and document.get("kind") != kind:
        raise ValueError(f"a {document.get('kind')!r} document, not a {kind!r} one")
    if not isinstance(document.get("buckets"), dict):
        raise ValueError("a meshd state document without buckets")
    return document
