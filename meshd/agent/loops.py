"""The loops agents run on KV: act on every change of some keys (or a resync period), and
mirror a bucket's decoded values."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from meshd.agent.store import Store, StoreUnavailable
from protocol.codec import decode
from protocol.errors import ProtocolError
from protocol.messages import Message

log = logging.getLogger(__name__)
SETTLE_S = 0.2  # let a burst of changes land before acting on it
RETRY_S = 1.0
M = TypeVar("M", bound=Message)


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
            try:
                await action()
            except StoreUnavailable as err:  # a leader election, say: the next round retries
                log.info("Store not answering; retrying. error=%s", err)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), resync_s)
            await asyncio.sleep(SETTLE_S)
    finally:
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)


async def follow(
    store: Store,
    bucket: str,
    kind: type[M],
    publish: Callable[[dict[str, M]], Awaitable[None]],
    keys: str = ">",
) -> None:
    """Keep the decoded values of a bucket and hand them to `publish` once the initial values
    are in and after every change; watch again after any interruption."""
    while True:
        values: dict[str, M] = {}
        ready = False
        try:
            async for entry in store.watch(bucket, keys):
                if entry is None:
                    ready = True
                elif entry.value is None:
                    values.pop(entry.key, None)
                else:
                    try:
                        values[entry.key] = decode(entry.value, kind)
                    except ProtocolError as err:
                        log.error(
                            "Invalid entry ignored. bucket=%s key=%s error=%s",
                            bucket,
                            entry.key,
                            err,
                        )
                        continue
                if ready:
                    await publish(values)
        except StoreUnavailable as err:
            log.info("Watch interrupted. bucket=%s error=%s", bucket, err)
        except Exception as err:  # the watch must come back whatever NATS did
            log.warning("Watch failed. bucket=%s error=%s", bucket, err)
        await asyncio.sleep(RETRY_S)
