"""The loop every leader role runs: act, then wait for a change of one KV key (or a resync
period), then act again."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

from meshd.store import Store

SETTLE_S = 0.2  # let a burst of changes land before acting on it


async def repeat_on_change(
    store: Store, bucket: str, key: str, action: Callable[[], Awaitable[None]], resync_s: float
) -> None:
    await repeat_on_changes(store, [(bucket, key)], action, resync_s)


async def repeat_on_changes(
    store: Store,
    watched: Sequence[tuple[str, str]],
    action: Callable[[], Awaitable[None]],
    resync_s: float,
) -> None:
    """Like `repeat_on_change`, for any change of several (bucket, keys) (">": every key)."""
    changed = asyncio.Event()

    async def watch(bucket: str, key: str) -> None:
        async for entry in store.watch(bucket, key):
            if entry is not None:
                changed.set()

    watchers = [
        asyncio.create_task(watch(bucket, key), name=f"watch-{bucket}-{key}")
        for bucket, key in watched
    ]
    try:
        while True:
            changed.clear()
            await action()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), resync_s)
            await asyncio.sleep(SETTLE_S)
    finally:
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
