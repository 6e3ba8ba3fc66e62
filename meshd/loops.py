"""The loop every leader role runs: act, then wait for a change of one KV key (or a resync
period), then act again."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from meshd.store import Store

SETTLE_S = 0.2  # let a burst of changes land before acting on it


async def repeat_on_change(
    store: Store, bucket: str, key: str, action: Callable[[], Awaitable[None]], resync_s: float
) -> None:
    changed = asyncio.Event()

    async def watch() -> None:
        async for entry in store.watch(bucket, key):
            if entry is not None:
                changed.set()

    watcher = asyncio.create_task(watch(), name=f"watch-{bucket}-{key}")
    try:
        while True:
            changed.clear()
            await action()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), resync_s)
            await asyncio.sleep(SETTLE_S)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
