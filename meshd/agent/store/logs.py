"""The logs stream (`MESH_LOGS`): agents ship batches of lines, `meshctl logs` reads them.

Shipping waits for JetStream's acknowledgement (a batch is kept by the shipper until then) and
fails at once with `StoreUnavailable` when there is none: the shipper buffers and tries later,
never blocking what it reads from. Reading is an ordered consumer on a subject filter, from a
start time; it ends once it has caught up with the stream or, with `follow`, yields None then
(as a KV watch does) and goes on with every new batch.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
from collections.abc import AsyncIterator

from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from meshd.agent.store import StoreUnavailable
from meshd.agent.store.errors import ANY_NATS_ERROR, reason
from protocol.codec import decode
from protocol.errors import ProtocolError
from protocol.logs import LogBatch

log = logging.getLogger(__name__)
SHIP_TIMEOUT_S = 2.0
CAUGHT_UP_WAIT_S = 0.3  # nothing pending: what may still be on its way is this close


async def ship(js: JetStreamContext, subject: str, data: bytes, batch_id: str) -> None:
    """`batch_id` makes a batch sent again (its first acknowledgement was lost, not the
    batch) one that the stream keeps once (JetStream's duplicate window, two minutes)."""
    try:
        await js.publish(subject, data, timeout=SHIP_TIMEOUT_S, headers={"Nats-Msg-Id": batch_id})
    except ANY_NATS_ERROR as err:
        raise StoreUnavailable(f"ship logs: {reason(err)}") from None


async def read(
    js: JetStreamContext, subject_filter: str, *, since: float | None, follow: bool
) -> AsyncIterator[LogBatch | None]:
    if since is None:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    else:
        start = datetime.datetime.fromtimestamp(since, tz=datetime.UTC)
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=start)
    try:
        subscription = await js.subscribe(subject_filter, ordered_consumer=True, config=config)
        pending = (await subscription.consumer_info()).num_pending
    except ANY_NATS_ERROR as err:
        raise StoreUnavailable(f"read logs: {reason(err)}") from None
    caught_up = False
    try:
        while True:
            wait = None if caught_up else (SHIP_TIMEOUT_S if pending else CAUGHT_UP_WAIT_S)
            try:
                msg = await subscription.next_msg(timeout=wait)
            except TimeoutError:  # what was there when the read began has all come
                pending = 0
            except ANY_NATS_ERROR as err:
                raise StoreUnavailable(f"read logs: {reason(err)}") from None
            else:
                if (batch := _decoded(msg.data)) is not None:
                    yield batch
                pending = msg.metadata.num_pending
            if pending == 0 and not caught_up:
                if not follow:
                    return
                caught_up = True
                yield None
    finally:
        with contextlib.suppress(*ANY_NATS_ERROR):
            await subscription.unsubscribe()


def _decoded(data: bytes) -> LogBatch | None:
    try:
        return decode(data, LogBatch)
    except ProtocolError as err:  # one broken batch must not hide the rest
        log.warning("Unreadable log batch skipped. error=%s", err)
        return None
