"""The loops agents run on KV: act on every change of some keys (or after a resync period),
mirror a bucket's decoded values, and keep one watch per key of a scope that changes (and the
values they read: `ScopedMirror`). A watch that breaks (a server died, a stream elects a
leader) is logged and watched again, and the next action runs at once: what changed
meanwhile is not missed until the resync."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Sequence
from functools import partial
from typing import Any, Generic, TypeVar

from meshd.agent.backoff import retries
from meshd.agent.store import Store, StoreUnavailable
from protocol.base import Message
from protocol.codec import decode
from protocol.errors import ProtocolError

log = logging.getLogger(__name__)
SETTLE_S = 0.2  # let a burst of changes land before acting on it
RETRY_S = 0.5  # a broken watch is watched again after this, growing up to RETRY_MAX_S
RETRY_MAX_S = 5.0
RESCOPE_EVERY_S = 5.0  # a scope is looked at again this often besides when told
ALL = ">"  # the scope of every key, in one watch
M = TypeVar("M", bound=Message)
_UNSEEN = object()


async def run_on_changes(
    store: Store,
    watched: Sequence[tuple[str, str]],
    action: Callable[[], Awaitable[None]],
    resync_s: float,
    *,
    when: Sequence[tuple[str, str, Callable[[bytes], Hashable]]] = (),
) -> None:
    """Run `action` now, after any change of the watched (bucket, keys) (">": every key),
    after a key of the `when` (bucket, keys, what) appears, goes, or changes its `what` (a
    droplet's incarnation, not each of its reports), and at least every `resync_s`. An action
    the store does not answer is tried again next round."""
    changed = asyncio.Event()

    async def watch(bucket: str, keys: str, what: Callable[[bytes], Hashable] | None) -> None:
        seen: dict[str, Hashable] = {}
        async for attempt in retries(RETRY_S, RETRY_MAX_S):
            try:
                async for entry in store.watch(bucket, keys):
                    if entry is None:
                        if attempt:
                            changed.set()  # watching again: act on what changed meanwhile
                    elif what is None:
                        changed.set()
                    elif entry.value is None:
                        seen.pop(entry.key, None)
                        changed.set()
                    elif seen.get(entry.key, _UNSEEN) != (now := what(entry.value)):
                        seen[entry.key] = now
                        changed.set()
            except StoreUnavailable as err:
                log.info("Watch broken; watching again. bucket=%s error=%s", bucket, err)

    async def act() -> None:
        while True:
            changed.clear()
            try:
                await action()
            except StoreUnavailable as err:  # a leader election, say: the next round retries
                log.info("Store not answering; retrying. error=%s", err)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), resync_s)
            await asyncio.sleep(SETTLE_S)

    # One group: a watcher that fails on a bug stops the action too, and the other way round.
    async with asyncio.TaskGroup() as tasks:
        for bucket, keys, what in [(b, k, None) for b, k in watched] + list(when):
            tasks.create_task(watch(bucket, keys, what), name=f"watch-{bucket}-{keys}")
        tasks.create_task(act(), name="act-on-changes")


async def mirror_bucket(
    store: Store,
    bucket: str,
    kind: type[M],
    publish: Callable[[dict[str, M]], Awaitable[None]],
    keys: str = ">",
) -> None:
    """Keep the decoded values of a bucket and hand them to `publish` once the initial values
    are in and after every change; watch again after any interruption."""
    async for _ in retries(RETRY_S, RETRY_MAX_S):
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
            log.info("Watch interrupted; watching again. bucket=%s error=%s", bucket, err)


class ScopedWatches:
    """One task per key of a scope (`ALL`: every key), started and stopped as the scope
    changes. The scope is looked at again when `rescope` is set, else every
    `RESCOPE_EVERY_S` (what it follows may change unannounced); `followed` is told the keys
    whose tasks stopped after each look. A task that fails ends `run` with its error; one
    that returns is started again at once."""

    def __init__(
        self,
        scope: Callable[[], frozenset[str]],
        watch: Callable[[str], Coroutine[Any, Any, None]],
        followed: Callable[[set[str]], Awaitable[None]],
    ) -> None:
        self.scope = scope
        self.watch = watch
        self.followed = followed
        self.rescope = asyncio.Event()
        self.tasks: dict[str, asyncio.Task[None]] = {}

    async def run(self) -> None:
        try:
            while True:
                self.rescope.clear()
                keys = self.scope()
                stopped = set(self.tasks) - keys
                for key in stopped:
                    self.tasks.pop(key).cancel()
                for key in keys:
                    if key not in self.tasks or self.tasks[key].done():  # one that returned too
                        self.tasks[key] = asyncio.create_task(self.watch(key), name=f"watch:{key}")
                await self.followed(stopped)
                told = asyncio.ensure_future(self.rescope.wait())
                await asyncio.wait(
                    [told, *self.tasks.values()],
                    timeout=RESCOPE_EVERY_S,
                    return_when="FIRST_COMPLETED",
                )
                told.cancel()
                for task in self.tasks.values():
                    if task.done() and not task.cancelled() and (error := task.exception()):
                        raise error
        finally:
            for task in self.tasks.values():
                task.cancel()
            await asyncio.gather(*self.tasks.values(), return_exceptions=True)


class ScopedMirror(Generic[M]):
    """The decoded values of a bucket's keys in a changing scope (`ScopedWatches`: one
    watch per key, or one of every key), handed to `publish` merged, with whether every
    watch of the scope has read (False while a watch just started)."""

    def __init__(
        self,
        store: Store,
        bucket: str,
        kind: type[M],
        scope: Callable[[], frozenset[str]],
        publish: Callable[[dict[str, M], bool], Awaitable[None]],
    ) -> None:
        self.store = store
        self.bucket = bucket
        self.kind = kind
        self.publish = publish
        self._watches = ScopedWatches(scope, self._watch, self._followed)
        self.rescope = self._watches.rescope
        self._parts: dict[str, dict[str, M]] = {}  # what each watch has read
        self._published = False

    @property
    def everything(self) -> bool:
        """The scope is every key (`ALL`)."""
        return ALL in self._watches.tasks

    async def run(self) -> None:
        await self._watches.run()

    async def _watch(self, key: str) -> None:
        await mirror_bucket(self.store, self.bucket, self.kind, partial(self._read, key), key)

    async def _followed(self, stopped: set[str]) -> None:
        for key in stopped:
            self._parts.pop(key, None)
        if stopped or self._watches.tasks.keys() - self._parts.keys() or not self._published:
            await self._publish()

    async def _read(self, key: str, values: dict[str, M]) -> None:
        self._parts[key] = values
        await self._publish()

    async def _publish(self) -> None:
        merged = {key: value for part in self._parts.values() for key, value in part.items()}
        self._published = True
        await self.publish(merged, self._parts.keys() >= self._watches.tasks.keys())
