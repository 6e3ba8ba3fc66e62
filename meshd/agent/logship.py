"""Every agent's log shipper: its instances' output, its own log and nginx's, into the logs
stream (`MESH_LOGS`, docs/logs.md), a batch per source and pass.

Files are read from disk (`meshd.agent.logtail`): an instance writes to its file and never
waits for the shipper. Each project has a byte budget (`ByteBudget`); lines over it are
dropped and counted, so a noisy service cannot evict another's lines. While the stream is
unavailable batches wait in a bounded buffer; when it is full the oldest go, counted. A
source's next batch carries the count of its lines dropped before it, which readers show.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from meshd.agent.logtail import Tails
from meshd.agent.metrics import LogCounts
from meshd.agent.store import Store, StoreUnavailable
from meshd.core.logs import ByteBudget, batches, docker_json_line, plain_line
from plugins.runtimes import LogFile, LogFiles, Runtime
from protocol import subjects
from protocol.codec import encode
from protocol.errors import ProtocolError
from protocol.logs import LogBatch, LogLine

log = logging.getLogger(__name__)
EVERY_S = 0.25  # a plain file's line is timed when read: this is its precision
SAVE_EVERY_S = 5.0
LIST_EVERY_S = 2.0
BATCH_BYTES = 16 * 1024  # `schema.LOG_BATCHES_PER_SUBJECT` batches of this size per subject
BUFFER_BYTES = 8 * 2**20
BUDGET = ByteBudget(rate=64 * 1024, burst=2**20)  # per project, bytes a second
OWN_LINES = 10_000  # the agent's own lines waiting for the next pass
MESH_BUDGET = "-mesh"  # the budget of the mesh's own lines (no project has this name)
NGINX_FILES = ("access.log", "error.log")


@dataclass(frozen=True, slots=True)
class Source:
    droplet: str
    project: str = ""
    env: str = ""
    service: str = ""
    slot: int = 0
    component: str = ""

    @property
    def subject(self) -> str:
        if self.component:
            return subjects.mesh_log(self.component, self.droplet)
        return subjects.app_log(self.project, self.env, self.service, self.droplet)

    @property
    def budget(self) -> str:
        return self.project or MESH_BUDGET


@dataclass(frozen=True, slots=True)
class Waiting:
    """A batch not yet acknowledged by the stream."""

    source: Source
    batch: LogBatch
    size: int
    id: str


class OwnLog(logging.Handler):
    """The agent's own log records, kept for the shipper's next pass (never blocks)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.lines: collections.deque[LogLine] = collections.deque(maxlen=OWN_LINES)

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.lines.append(LogLine(at=record.created, text=self.format(record)))


class LogShipper:
    def __init__(
        self,
        store: Callable[[], Store | None],
        droplet: str,
        runtime: Runtime,
        lb_dir: Path,
        data_dir: Path,
        *,
        budget: ByteBudget = BUDGET,
        buffer_bytes: int = BUFFER_BYTES,
    ) -> None:
        self._store = store
        self._droplet = droplet
        self._runtime = runtime
        self._lb_dir = lb_dir
        self._tails = Tails(data_dir / "log-offsets.json")
        self._budget = ByteBudget(budget.rate, budget.burst)
        self._buffer_bytes = buffer_bytes
        self._pending: collections.deque[Waiting] = collections.deque()
        self._prefix = f"{droplet}-{uuid.uuid4().hex[:12]}-"  # batch ids: this life's
        self._count = 0
        self._pending_bytes = 0
        self._owed: collections.Counter[Source] = collections.Counter()  # dropped, not yet said
        self.dropped: collections.Counter[str] = collections.Counter()  # lines, by reason
        self.shipped = 0  # lines
        self.own = OwnLog()
        self._saved_at = 0.0
        self._listed: list[tuple[Source, LogFile]] = []
        self._listed_at = -LIST_EVERY_S

    def counts(self) -> LogCounts:
        return LogCounts(self.shipped, self.dropped.copy(), len(self._pending))

    @property
    def waiting(self) -> int:
        """Batches in the buffer."""
        return len(self._pending)

    async def run(self) -> None:
        while True:
            await self.ship_once()
            await asyncio.sleep(EVERY_S)

    async def ship_once(self) -> None:
        files = await self._files()
        read = await asyncio.to_thread(self._read, files)
        own = [self.own.lines.popleft() for _ in range(len(self.own.lines))]
        read.append((Source(self._droplet, component="agent"), own))
        now = time.time()
        for source, lines in read:
            self._queue(source, lines, now)
        await self._flush()
        if now - self._saved_at > SAVE_EVERY_S:
            self._saved_at = now
            await asyncio.to_thread(self._tails.save)

    async def _files(self) -> list[tuple[Source, LogFile]]:
        """Listed every LIST_EVERY_S (a Docker engine is asked over its API); a file found
        late is read from its start while it is small, so nothing early is missed."""
        now = time.monotonic()
        if now - self._listed_at >= LIST_EVERY_S:
            self._listed_at = now
            self._listed = await self._list_files()
        return self._listed

    async def _list_files(self) -> list[tuple[Source, LogFile]]:
        found: list[tuple[Source, LogFile]] = []
        if isinstance(self._runtime, LogFiles):
            try:
                listed = await self._runtime.log_files()
            except Exception as err:  # noqa: BLE001 - the engine is away: ship the rest
                log.debug("Instance log files not listed. error=%s", err)
                listed = []
            for file in listed:
                try:
                    project, env, service, slot = subjects.parse_instance_key(file.key)
                except ProtocolError:
                    continue
                found.append((Source(self._droplet, project, env, service, slot), file))
        nginx = Source(self._droplet, component="nginx")
        found += [(nginx, LogFile("nginx", self._lb_dir / name)) for name in NGINX_FILES]
        return found

    def _read(self, files: list[tuple[Source, LogFile]]) -> list[tuple[Source, list[LogLine]]]:
        """Blocking: new lines of every file."""
        now = time.time()
        read = []
        for source, file in files:
            raw = self._tails.read(file.path)
            if file.format == "json-file":
                parsed = [docker_json_line(r, now) for r in raw]
                read.append((source, [line for line in parsed if line is not None]))
            else:
                read.append((source, [plain_line(r, now) for r in raw]))
        self._tails.keep_only({str(file.path) for _, file in files})
        return read

    def _queue(self, source: Source, lines: list[LogLine], now: float) -> None:
        kept = []
        for line in lines:
            if self._budget.take(source.budget, len(line.text) + 1, now):
                kept.append(line)
            else:
                self._owed[source] += 1
                self.dropped["budget"] += 1
        for group in batches(kept, BATCH_BYTES):
            owed = self._owed.pop(source, 0)
            batch = LogBatch(
                droplet=source.droplet,
                lines=group,
                project=source.project,
                env=source.env,
                service=source.service,
                slot=source.slot,
                component=source.component,
                dropped=owed,
                batch_id=f"{self._prefix}{self._count + 1}",
            )
            self._count += 1
            waiting = Waiting(source, batch, sum(len(line.text) for line in group),
                              batch.batch_id)  # fmt: skip
            self._pending.append(waiting)
            self._pending_bytes += waiting.size
        while self._pending_bytes > self._buffer_bytes and self._pending:
            self._evict_oldest()

    def _evict_oldest(self) -> None:
        """The oldest batch goes; the next waiting one of its source says so (else the next
        one made)."""
        old = self._pending.popleft()
        self._pending_bytes -= old.size
        self.dropped["buffer"] += len(old.batch.lines)
        gone = len(old.batch.lines) + old.batch.dropped
        for i, later in enumerate(self._pending):
            if later.source == old.source:
                told = dataclasses.replace(later.batch, dropped=later.batch.dropped + gone)
                self._pending[i] = dataclasses.replace(later, batch=told)
                return
        self._owed[old.source] += gone

    async def _flush(self) -> None:
        store = self._store()
        if store is None or not store.connected:
            return
        while self._pending:
            head = self._pending[0]
            try:
                await store.ship_logs(head.source.subject, encode(head.batch), head.id)
            except StoreUnavailable as err:
                log.debug("Logs not shipped; kept for later. batches=%d error=%s",
                          len(self._pending), err)  # fmt: skip
                return
            self._pending.popleft()
            self._pending_bytes -= head.size
            self.shipped += len(head.batch.lines)
