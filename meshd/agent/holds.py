"""Detection holds (KV `mesh_desired/hold.<droplet>`): a held droplet is suspected when silent
but never confirmed dead until its hold ends. The operator takes them (`meshctl hold`), and so
does master's agent while the JetStream state moves (`servers`)."""

from __future__ import annotations

import time

from meshd.agent.store import Store
from protocol import subjects
from protocol.codec import decode, encode
from protocol.messages import DetectionHold


async def take_hold(
    store: Store, droplet: str, duration_s: float, reason: str, by: str, *, longer: bool = False
) -> DetectionHold:
    """Hold the droplet for `duration_s`; with `longer`, a hold that lasts longer already
    (the operator's) is kept instead, and returned."""
    now = time.time()
    held = DetectionHold(
        droplet=droplet, until=now + duration_s, reason=reason, held_by=by, held_at=now
    )
    key = subjects.hold_key(droplet)
    if longer:
        found = await store.get(subjects.DESIRED_BUCKET, key)
        current = decode(found.value, DetectionHold) if found and found.value else None
        if current is not None and current.until >= held.until:
            return current
    await store.put(subjects.DESIRED_BUCKET, key, encode(held))
    return held


async def end_hold(store: Store, droplet: str, reason: str | None = None) -> DetectionHold | None:
    """Remove the droplet's hold (only if it was taken for `reason`, when given); the one
    removed, expired or not (None: there was none)."""
    key = subjects.hold_key(droplet)
    found = await store.get(subjects.DESIRED_BUCKET, key)
    if found is None or found.value is None:
        return None
    held = decode(found.value, DetectionHold)
    if reason is not None and held.reason != reason:
        return None
    await store.delete(subjects.DESIRED_BUCKET, key)
    return held
