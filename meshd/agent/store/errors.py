"""The store's boundary for errors: every nats error becomes one of the store's own. Only the
store's own modules use this."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import nats.errors
import nats.js.errors

from meshd.agent.store import Conflict, StoreRefused, StoreUnavailable

UNAVAILABLE: tuple[type[BaseException], ...] = (
    nats.errors.TimeoutError,
    nats.errors.NoServersError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionDrainingError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.errors.NoRespondersError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.SlowConsumerError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.ServerError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.NotFoundError,  # a stream or bucket not created yet (or mid-election)
    asyncio.TimeoutError,
    OSError,
)
# Everything the client can raise (for the places where any failure means "no answer").
ANY_NATS_ERROR: tuple[type[BaseException], ...] = (*UNAVAILABLE, nats.errors.Error)
# JetStream API error codes that mean "the key changed since the revision given".
WRONG_LAST_SEQUENCE = 10071  # a publish's expected last subject sequence did not match
WRONG_LAST_MSG_ID = 10164  # ... the same, for a key whose last message is gone (TTL)
CONFLICTS = frozenset({WRONG_LAST_SEQUENCE, WRONG_LAST_MSG_ID})
# A write to a sealed stream: the mesh's JetStream is moving to other servers (store/moves.py)
# and takes writes again once it has; to a writer that is "try later".
SEALED = 10109
# A stream the servers do not have (yet): during a move, before its restore; on a server that
# is catching up. A missing stream of the schema is never a lasting state: "try later".
STREAM_NOT_FOUND = 10059
TRY_LATER = frozenset({SEALED, STREAM_NOT_FOUND})


def reason(err: BaseException) -> str:
    text = str(err).removeprefix("nats: ")
    return text or type(err).__name__


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """Raise the store's own error for any nats error inside the block: `Conflict` for a lost
    compare-and-set, `StoreUnavailable` for no answer, `StoreRefused` for a request JetStream
    refuses (a 4xx: a bug, or a bucket whose settings differ)."""
    try:
        yield
    except (Conflict, StoreUnavailable, StoreRefused):
        raise
    except nats.js.errors.KeyWrongLastSequenceError:
        raise Conflict(f"{what}: changed meanwhile") from None
    except nats.js.errors.APIError as err:
        if err.err_code in CONFLICTS:
            raise Conflict(f"{what}: changed meanwhile") from None
        if isinstance(err, UNAVAILABLE) or (err.code or 0) >= 500 or err.err_code in TRY_LATER:
            raise StoreUnavailable(f"{what}: {reason(err)}") from None
        raise StoreRefused(f"{what}: {reason(err)}") from err
    except UNAVAILABLE as err:
        raise StoreUnavailable(f"{what}: {reason(err)}") from None
    except nats.errors.Error as err:
        raise StoreRefused(f"{what}: {reason(err)}") from err
