"""One retry policy: exponential backoff with full jitter, capped; the loop runs at once, then
after each delay, until the attempts or the deadline run out."""

from __future__ import annotations

import time

from meshd.agent.backoff import retries
from meshd.core.backoff import delay


def test_delays_are_jittered_below_an_exponential_ceiling_and_capped() -> None:
    assert [delay(n, 0.5, 8.0, rng=lambda: 1.0) for n in range(7)] == [
        0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0,
    ]  # fmt: skip
    assert delay(3, 0.5, 8.0, rng=lambda: 0.0) == 0.0
    samples = {delay(4, 0.5, 8.0) for _ in range(200)}
    assert all(0.0 <= s <= 8.0 for s in samples) and len(samples) > 100  # spread, not a step


async def test_retries_stop_after_their_attempts_or_their_deadline() -> None:
    assert [attempt async for attempt in retries(0.001, 0.002, attempts=4)] == [0, 1, 2, 3]
    started = time.monotonic()
    count = 0
    async for _ in retries(0.05, 0.05, deadline=time.monotonic() + 0.3):
        count += 1
    assert time.monotonic() - started < 1.0 and 2 <= count <= 60
