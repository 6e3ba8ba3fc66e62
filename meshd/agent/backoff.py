"""The one retry loop: `async for attempt in retries(...)` runs its body at once, then again
after each backoff delay (`meshd.core.backoff`), until the body breaks out, the attempts or
the deadline run out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from meshd.core.backoff import delay


async def retries(
    base: float,
    cap: float,
    *,
    attempts: int | None = None,
    deadline: float | None = None,  # on the monotonic clock
) -> AsyncIterator[int]:
    """Attempt numbers 0, 1, 2, ...; a delay with full jitter before each but the first. A
    caller that succeeds breaks out; one that finds the loop ended without a break has run
    out of attempts (or time)."""
    attempt = 0
    while True:
        yield attempt
        attempt += 1
        if attempts is not None and attempt >= attempts:
            return
        wait = delay(attempt - 1, base, cap)
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            wait = min(wait, left)
        await asyncio.sleep(wait)
