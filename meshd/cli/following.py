"""Sending deploy requests and following their progress: shared by `meshctl deploy`,
`promote`, `rollback` and the git hook (`meshctl hook post-receive`).

A request names a progress inbox (`subjects.deploy_inbox`); the builder answers
`DeployProgress` lines there, the last one of each request `final`. The inbox is subscribed to
before the request is sent, so that no line is missed.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Collection
from types import TracebackType

from meshd.agent.store import Received, Store, Subscription
from protocol import subjects
from protocol.codec import decode, encode
from protocol.errors import ProtocolError
from protocol.releases import DeployProgress, DeployRequest

log = logging.getLogger(__name__)


async def send(store: Store, request: DeployRequest) -> int:
    """Queue `request` in `MESH_DEPLOY`; its sequence number in the stream."""
    return await store.enqueue(subjects.deploy(request.project), encode(request))


class ProgressInbox:
    """A fresh progress inbox, subscribed to while the `async with` lasts."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.subject = subjects.deploy_inbox(uuid.uuid4().hex)
        self._lines: asyncio.Queue[DeployProgress] = asyncio.Queue()
        self._subscription: Subscription | None = None

    async def __aenter__(self) -> ProgressInbox:
        self._subscription = await self._store.subscribe(self.subject, self._receive)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()
            self._subscription = None

    async def _receive(self, received: Received) -> None:
        try:
            progress = decode(received.data, DeployProgress)
        except ProtocolError as err:
            log.warning("A progress line could not be read. error=%s", err)
            return
        self._lines.put_nowait(progress)

    async def follow(
        self,
        request_ids: Collection[str],
        show: Callable[[DeployProgress], None],
        timeout: float,  # noqa: ASYNC109 - the whole follow's, not one call's
    ) -> dict[str, DeployProgress]:
        """Show each line of the requests `request_ids` as it comes, until each has had its
        final line or `timeout` seconds have passed; the final lines that came, by request."""
        finals: dict[str, DeployProgress] = {}
        try:
            async with asyncio.timeout(timeout):
                while len(finals) < len(request_ids):
                    progress = await self._lines.get()
                    if progress.request_id not in request_ids or progress.request_id in finals:
                        continue
                    show(progress)
                    if progress.final:
                        finals[progress.request_id] = progress
        except TimeoutError:
            pass
        return finals
