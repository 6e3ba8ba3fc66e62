"""The entries of a bucket's keys as a leader last read or wrote them, kept by one watch, so
that a pass over them costs neither a round trip nor a message per key (the scheduler reads
every allocation on each pass: docs/scale.md).

Until its watch has read the current entries (and again after the watch breaks) a read goes
to the store, as it would without the mirror. The leader notes its own writes with their
revisions at once, so its next pass writes over what it wrote, not over what the watch has
not delivered yet; an entry the watch delivers late (an older revision) is ignored."""

from __future__ import annotations

import logging

from meshd.agent.backoff import retries
from meshd.agent.loops import RETRY_MAX_S, RETRY_S
from meshd.agent.store import Entry, Store, StoreUnavailable

log = logging.getLogger(__name__)


class KeyMirror:
    def __init__(self, store: Store, bucket: str, keys: str = ">") -> None:
        self.store = store
        self.bucket = bucket
        self.keys = keys
        self._entries: dict[str, Entry] = {}
        self._revisions: dict[str, int] = {}  # the newest revision known of each key
        self._live = False  # the watch has read the current entries and follows them

    @property
    def following(self) -> bool:
        """Its watch has read the bucket and follows it: reads cost nothing."""
        return self._live

    async def entries(self) -> dict[str, Entry]:
        """The live entries (values, not deletions) by key."""
        if self._live:
            return dict(self._entries)
        return await self.store.entries(self.bucket, self.keys)

    def wrote(self, key: str, value: bytes, revision: int) -> None:
        self._take(Entry(key, value, revision))

    def deleted(self, key: str, last: int) -> None:
        """`key` deleted over revision `last` (its deletion's own revision is later)."""
        self._take(Entry(key, None, last + 1))

    async def run(self) -> None:
        """Follow the bucket until cancelled; watch again after any interruption."""
        try:
            async for _ in retries(RETRY_S, RETRY_MAX_S):
                self._entries.clear()
                self._revisions.clear()
                try:
                    async for entry in self.store.watch(self.bucket, self.keys):
                        if entry is None:
                            self._live = True
                        else:
                            self._take(entry)
                except StoreUnavailable as err:
                    log.info(
                        "Mirror interrupted; reading again. bucket=%s error=%s", self.bucket, err
                    )
                self._live = False
        finally:
            self._live = False

    def _take(self, entry: Entry) -> None:
        if entry.revision <= self._revisions.get(entry.key, 0):
            return  # older than what this leader wrote or read since
        self._revisions[entry.key] = entry.revision
        if entry.value is None:
            self._entries.pop(entry.key, None)
        else:
            self._entries[entry.key] = entry
