"""How long to wait before trying again: exponential backoff with full jitter (AWS's
"Exponential Backoff And Jitter"), so that agents that failed together after a JetStream
election do not all come back at the same instant, when the new leader is busiest."""

from __future__ import annotations

import random
from collections.abc import Callable


def delay(attempt: int, base: float, cap: float, rng: Callable[[], float] = random.random) -> float:
    """Seconds to wait after failed attempt `attempt` (0 the first): uniformly random up to
    `base * 2**attempt`, at most `cap`."""
    return rng() * min(cap, base * 2.0 ** min(attempt, 32))
