"""The `logs` role (docs/logs.md): forwards the logs stream to the deployment config's
OpenSearch, if it names one, with the `_bulk` API.

The role reads through a durable consumer (`subjects.LOGS_CONSUMER`), so a new leader, or
this one after a restart, goes on from the last batch OpenSearch took. A batch is acknowledged
only once OpenSearch took every line of it: delivery is at least once, and each line's id
(`<batch id>-<index>`) makes a second delivery replace the first, so the index holds every
line once. A failure is an event (once per distinct reason) and the batches come again
after a backoff; the password is the mesh secret `opensearch_password`.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable
from typing import Any

from meshd.agent.lease import Term
from meshd.agent.meshview import MeshView
from meshd.agent.store import Delivery, Store, StoreUnavailable, WorkQueue
from meshd.core.backoff import delay
from plugins.logsinks import LogSink, OpenSearchSettings, SinkError, open_sink
from protocol import subjects
from protocol.codec import decode
from protocol.errors import ProtocolError
from protocol.logs import LogBatch
from protocol.subjects import Role

log = logging.getLogger(__name__)
PASSWORD_SECRET = "opensearch_password"
BULK_BATCHES = 50  # log batches (of up to 16 KB each) per bulk request
IDLE_S = 5.0  # no sink configured: look again after this long
TAKE_WAIT_S = 1.0
MORE_WAIT_S = 0.05  # after the first batch, the next ones only if already there
ACK_WAIT_S = 45.0  # batches a leader took and never acknowledged (it died) come back after this


def document(batch: LogBatch, mesh: str) -> list[tuple[str, dict[str, Any]]]:
    """The lines of a batch as (id, OpenSearch document)."""
    common: dict[str, Any] = {"mesh": mesh, "droplet": batch.droplet}
    if batch.component:
        common["component"] = batch.component
    else:
        common |= {"project": batch.project, "env": batch.env, "service": batch.service,
                   "slot": batch.slot}  # fmt: skip
    return [
        (
            f"{batch.batch_id}-{i}",
            {
                "@timestamp": datetime.datetime.fromtimestamp(line.at, datetime.UTC).isoformat(),
                "message": line.text,
                "stream": line.stream,
                **common,
            },
        )
        for i, line in enumerate(batch.lines)
    ]


class LogForwarder:
    role = Role.LOGS

    def __init__(
        self,
        store: Store,
        view: MeshView,
        droplet: str,
        mesh: str,
        secret: Callable[[str], bytes | None],
        sink: Callable[[OpenSearchSettings, str | None], LogSink] = open_sink,
        ack_wait: float = ACK_WAIT_S,
    ) -> None:
        self.store = store
        self.view = view
        self.droplet = droplet
        self.mesh = mesh
        self.secret = secret
        self.make_sink = sink
        self.ack_wait = ack_wait
        self._reported: str | None = None
        self.forwarded = 0  # lines

    def settings(self) -> OpenSearchSettings | None:
        desired = self.view.state
        return OpenSearchSettings.from_data(desired.logs.get("opensearch") if desired else None)

    async def lead(self, term: Term) -> None:
        sink: LogSink | None = None
        used: OpenSearchSettings | None = None
        queue: WorkQueue | None = None
        failures = 0
        try:
            while True:
                term.ensure_held()
                settings = self.settings()
                if settings != used or sink is None:
                    if sink is not None:
                        await sink.close()
                        sink = None
                    used = settings
                    if settings is None:
                        await asyncio.sleep(IDLE_S)
                        continue
                    password = self.secret(PASSWORD_SECRET)
                    sink = self.make_sink(settings, password.decode() if password else None)
                try:
                    if queue is None:
                        queue = await self.store.work_queue(
                            subjects.LOGS_STREAM,
                            subjects.LOGS_SUBJECTS,
                            subjects.LOGS_CONSUMER,
                            self.ack_wait,
                        )
                    taken = await self._take(queue)
                except StoreUnavailable as err:
                    log.info("Logs stream not readable. error=%s", err)
                    queue = None
                    await asyncio.sleep(TAKE_WAIT_S)
                    continue
                if not taken:
                    continue
                if await self._forward(term, sink, queue, taken, failures):
                    failures = 0
                else:
                    failures += 1
        finally:
            if sink is not None:
                await sink.close()
            if queue is not None:
                await queue.close()

    async def _take(self, queue: WorkQueue) -> list[Delivery]:
        taken: list[Delivery] = []
        first = await queue.take(TAKE_WAIT_S)
        while first is not None:
            taken.append(first)
            if len(taken) >= BULK_BATCHES:
                break
            first = await queue.take(MORE_WAIT_S)
        return taken

    async def _forward(
        self, term: Term, sink: LogSink, queue: WorkQueue, taken: list[Delivery], failures: int
    ) -> bool:
        documents: list[tuple[str, dict[str, Any]]] = []
        for delivery in taken:
            try:
                documents += document(decode(delivery.data, LogBatch), self.mesh)
            except ProtocolError as err:
                log.warning("Unreadable log batch skipped. error=%s", err)
        term.ensure_held()
        try:
            await sink.send(documents)
        except SinkError as err:
            wait = delay(failures, base=1.0, cap=60.0)
            for delivery in taken:
                await queue.later(delivery, wait)
            if str(err) != self._reported:
                self._reported = str(err)
                log.warning("Logs not forwarded; trying again. error=%s", err)
                self.store.record_soon("logs_forward_failed", self.droplet, "opensearch",
                                       {"error": str(err)}, term.fence)  # fmt: skip
            await asyncio.sleep(wait)
            return False
        for delivery in taken:
            await queue.done(delivery)
        self.forwarded += len(documents)
        if self._reported is not None:
            self._reported = None
            self.store.record_soon("logs_forwarding", self.droplet, "opensearch", {}, term.fence)
        return True
