"""Backups of the mesh itself (docs/backups.md): its state, every KV bucket but the secrets
(what is published, allocated, released, who failed, the snapshots' index), and the sealed
secrets apart, kept longer. Each is one document: the buckets' live entries as they are,
msgpack'd, which `meshctl backup restore-mesh` will write back into a new mesh."""

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


def read_document(data: bytes) -> dict[str, Any]:
    """A state document back (for restores and for checking one)."""
    document = msgpack.unpackb(data, raw=False)
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError("not a meshd state document")
    return document
