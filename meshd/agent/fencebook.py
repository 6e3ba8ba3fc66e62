"""The mesh's fence book (`plugins.providers.FenceBook`) in the `mesh_fences` bucket: one key
per role and droplet holding the newest lease revision that role showed the provider, written
by compare-and-set, so that of two leaders of one role (a deposed one still acting, and its
successor) only the newer gets past a provider that cannot check fences itself (DigitalOcean).

What it cannot close: a check and the cloud call after it are two steps. A deposed leader that
passed its check before its successor recorded a newer fence still makes its one call; after
that, every call it makes is refused. docs/digitalocean.md says so.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from meshd.agent.store import Conflict, Store, StoreUnavailable
from plugins.providers import Fence, StaleFence
from protocol import subjects

ATTEMPTS = 5


class StoreFenceBook:
    """`admit` against the store the agent has now (`store()`; None while it has none)."""

    def __init__(self, store: Callable[[], Store | None]) -> None:
        self._store = store

    async def admit(self, resource: str, fence: Fence, action: str) -> None:
        store = self._store()
        if store is None:
            raise StoreUnavailable(f"{action}: no store to check fence {fence} against")
        key = subjects.fence_key(fence.role, resource)
        for _ in range(ATTEMPTS):
            entry = await store.get(subjects.FENCES_BUCKET, key)
            value = json.dumps({"revision": fence.revision}).encode()
            try:
                if entry is None or entry.value is None:
                    await store.create(subjects.FENCES_BUCKET, key, value)
                    return
                seen = int(json.loads(entry.value)["revision"])
                if fence.revision < seen:
                    raise StaleFence(action, fence, seen)
                if fence.revision > seen:
                    await store.update(subjects.FENCES_BUCKET, key, value, last=entry.revision)
                return
            except Conflict:
                continue  # another agent wrote meanwhile: read again
        raise StoreUnavailable(f"{action}: fence {fence} lost {ATTEMPTS} compare-and-sets")
